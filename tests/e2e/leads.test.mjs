// Leads (seed 000): token sources, leads_init, get_leads with pages and
// every filter, the remembered page and filter, get_lead_details, and bad
// requests — the same scenarios over Socket.IO namespace `/leads` (WebSocket
// and long-polling transports) and over the plain WebSocket `/ws/leads/`.
//
// One gateway (no Redis) with three providers imported through
// `leadgate leads import`: the example crawler's freelance.de and xing
// fixtures (12 leads each) and a small fixture of our own (gulp.de) with a
// numeric project id, leads without posted_at and extra fields for `raw`.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { assertTransport, badTokens, token, uniqueUser } from './lib/harness.mjs';
import {
  KINDS,
  SOURCES_OF,
  DETAIL_FIELDS,
  LEAD_FIELDS,
  startLeadsGateway,
  connectLeads,
  refusedLeads,
  closeAllLeadsClients,
  importLeads,
  fixture,
  fixturePath,
  expectedKeys,
  assertPage,
  assertPageShape,
  keys,
} from './lib/leads.mjs';

/** Our own leads: what the example fixtures do not cover. */
const GULP = [
  {
    project_id: 4711,
    title: 'Rust Embedded Firmware',
    company: 'Zeppelin Systems',
    location: 'Friedrichshafen',
    remote: true,
    rate: '95 €/h',
    skills: ['RUST', 'Embedded', 'C'],
    url: 'https://gulp.example/4711',
    posted_at: '2026-11-25T10:00:00+01:00',
    description: 'Firmware für Sensoren, Laufzeit 6 Monate.',
    budget_eur: 42000,
    contact: { name: 'Erika Mustermann', phone: null },
    tags: ['embedded', 'iot'],
  },
  { project_id: 'gp-2', title: 'Kotlin Android App', company: 'Zeppelin Systems', remote: false, skills: ['Kotlin', 'Android'] },
  { project_id: 'gp-3', title: 'Scrum Master Agile', skills: [] },
];

/** Every imported lead with its import order (later = newer row). */
const ALL = [];
let gw;

before(async () => {
  gw = await startLeadsGateway();
  const env = { databaseUrl: gw.db.url, gateways: [gw] };
  let seq = 0;
  for (const [provider, leads, file] of [
    ['freelance.de', fixture('freelance.de'), fixturePath('freelance.de')],
    ['xing', fixture('xing'), fixturePath('xing')],
    ['gulp.de', GULP, GULP],
  ]) {
    await importLeads(env, file, provider);
    for (const l of leads) ALL.push({ ...l, project_id: String(l.project_id), provider, seq: ++seq });
  }
  assert.equal(ALL.length, 27);
});

after(async () => {
  closeAllLeadsClients();
  await gw?.stop();
});

const ids =
  (...wanted) =>
  (l) =>
    wanted.includes(l.project_id);
const lower = (a) => (a ?? []).map((s) => s.toLowerCase());
const hasSkills = (...s) => (l) => s.every((x) => lower(l.skills).includes(x.toLowerCase()));

const client = (kind, t, opts = {}) => connectLeads(gw, kind, { token: token({ sub: uniqueUser('leads') }), ...opts }, t);

for (const kind of KINDS) {
  describe(`leads [${kind}]`, () => {
    describe('connecting', () => {
      for (const source of SOURCES_OF[kind]) {
        it(`token from ${source}: leads_init right after connect, page 1 of 100, total after the imports`, async (t) => {
          const c = await client(kind, t, { source });
          if (kind !== 'ws') await assertTransport(c.socket, kind.replace('sio-', ''));
          assert.equal(c.messages[0].type, 'leads_init', 'the first message is leads_init');
          assertPage(c.messages[0].payload, { page: 1, page_size: 100, want: expectedKeys(ALL) });
          assert.equal(c.messages.length, 1, `nothing but leads_init before a request: ${JSON.stringify(c.messages.map((m) => m.type))}`);
        });

        it(`a garbage token from ${source} is refused: "invalid token: malformed"`, async () => {
          const err = await refusedLeads(gw, kind, { token: badTokens.garbage(), source });
          assert.equal(err.message, 'invalid token: malformed');
          if (kind === 'ws') assert.equal(err.closeCode, 1008);
        });
      }

      const refusals = [
        ['no token', undefined, 'authentication required: missing token'],
        ['an expired token', badTokens.expired(), 'invalid token: expired'],
        ['a token signed with another secret', badTokens.wrongSecret(), 'invalid token: bad signature'],
        ['a token whose payload was changed', badTokens.tampered(), 'invalid token: bad signature'],
        ['a token with alg "none"', badTokens.algNone(), /^invalid token: /],
      ];
      for (const [what, tok, expected] of refusals) {
        it(`${what} is refused: ${expected}`, async () => {
          const err = await refusedLeads(gw, kind, { token: tok });
          if (expected instanceof RegExp) assert.match(err.message, expected);
          else assert.equal(err.message, expected);
          if (kind === 'ws') {
            assert.equal(err.closeCode, 1008, 'close code 1008 (policy violation)');
            assert.deepEqual(err.frames, [{ type: 'error', detail: err.message }], 'exactly one error frame, then close');
          }
        });
      }
    });

    describe('get_leads: pages', () => {
      it('page_size 10: pages 1, 2, 3 hold 10, 10 and 7 leads in order; page 4 is empty', async (t) => {
        const c = await client(kind, t);
        const seen = [];
        for (const [page, n] of [[1, 10], [2, 10], [3, 7], [4, 0]]) {
          const msg = await c.getLeads({ page, page_size: 10 });
          assertPage(msg, { page, page_size: 10, want: expectedKeys(ALL, { page, page_size: 10 }) });
          assert.equal(msg.projects.length, n);
          seen.push(...keys(msg));
        }
        assert.deepEqual(seen, expectedKeys(ALL).keys, 'the pages together are every lead once, in order');
      });

      it('order: newest posted_at first (offsets normalized), equal posted_at newest row first, no posted_at last', async (t) => {
        const c = await client(kind, t);
        const page = c.init;
        const k = keys(page);
        assert.equal(k[0], 'gulp.de/4711', 'posted 2026-11-25T10:00+01:00 is the newest');
        assert.equal(page.projects[0].posted_at && Date.parse(page.projects[0].posted_at), Date.parse('2026-11-25T09:00:00Z'));
        // Both fixtures share their posted_at values; xing was imported later.
        assert.deepEqual(k.slice(1, 5), ['xing/xg-5011', 'freelance.de/fd-1111', 'xing/xg-5010', 'freelance.de/fd-1110']);
        assert.deepEqual(k.slice(-2), ['gulp.de/gp-3', 'gulp.de/gp-2'], 'leads without posted_at last, newest row first');
        assert.equal(page.projects.at(-1).posted_at, null);
      });

      it('page_size 1 and 500 are accepted', async (t) => {
        const c = await client(kind, t);
        assertPage(await c.getLeads({ page: 3, page_size: 1 }), { page: 3, page_size: 1, want: expectedKeys(ALL, { page: 3, page_size: 1 }) });
        assertPage(await c.getLeads({ page: 1, page_size: 500 }), { page: 1, page_size: 500, want: expectedKeys(ALL, { page_size: 500 }) });
      });

      it('every lead carries its provider; all three providers are listed', async (t) => {
        const c = await client(kind, t);
        assertPageShape(c.init);
        const providers = new Set(c.init.projects.map((p) => p.provider));
        assert.deepEqual([...providers].sort(), ['freelance.de', 'gulp.de', 'xing']);
        for (const p of c.init.projects) {
          assert.equal(p.provider, p.project_id.startsWith('fd-') ? 'freelance.de' : p.project_id.startsWith('xg-') ? 'xing' : 'gulp.de', `provider of ${p.project_id}`);
          assert.equal(p.description, undefined, 'no description on a page');
          assert.equal(p.raw, undefined, 'no raw on a page');
        }
        // A page lead holds what was imported.
        const fd = fixture('freelance.de').find((l) => l.project_id === 'fd-1104');
        const got = c.init.projects.find((p) => p.project_id === 'fd-1104');
        for (const f of ['title', 'company', 'location', 'remote', 'rate', 'skills', 'url']) assert.deepEqual(got[f], fd[f], `fd-1104.${f}`);
        assert.equal(Date.parse(got.posted_at), Date.parse(fd.posted_at));
      });
    });

    describe('get_leads: filters', () => {
      const cases = [
        ['remote: true', { remote: true }, (l) => l.remote === true],
        ['remote: false (a lead without remote is in neither)', { remote: false }, (l) => l.remote === false],
        ['provider: xing', { provider: 'xing' }, (l) => l.provider === 'xing'],
        ['provider: gulp.de', { provider: 'gulp.de' }, (l) => l.provider === 'gulp.de'],
        ['provider that has no leads', { provider: 'monster.de' }, () => false],
        ['q: one word matches title words and skills', { q: 'rust' }, ids('fd-1100', 'fd-1110', 'xg-5000', 'xg-5010', '4711')],
        ['q: a word beginning (Entw → Entwickler, Entwicklung)', { q: 'Entw' }, ids('fd-1100', 'fd-1102', 'fd-1105', 'xg-5000', 'xg-5002', 'xg-5005')],
        ['q: every word must match (python django)', { q: 'python django' }, ids('fd-1101', 'xg-5001')],
        ['q: case and punctuation do not matter', { q: 'KUBERNETES, terraform!' }, ids('fd-1104', 'xg-5004')],
        ['q: words of title and skills together', { q: 'Scoring python' }, ids('fd-1107', 'xg-5007')],
        ['q: the company counts (Zepp Sys)', { q: 'Zepp Sys' }, ids('4711', 'gp-2')],
        ['q: no match', { q: 'Quantencomputer' }, () => false],
        ['skills: one skill, case-insensitive', { skills: ['PostgreSQL'] }, hasSkills('postgresql')],
        ['skills: imported in upper case, asked in lower case', { skills: ['rust'] }, hasSkills('rust')],
        ['skills: all listed skills', { skills: ['python', 'SQL'] }, hasSkills('python', 'sql')],
        ['skills: a skill is matched whole (c is not css)', { skills: ['c'] }, ids('4711')],
        ['skills: no lead has both', { skills: ['python', 'rust'] }, () => false],
        [
          'combined: provider + remote + skills',
          { provider: 'xing', remote: true, skills: ['postgresql'] },
          (l) => l.provider === 'xing' && l.remote === true && hasSkills('postgresql')(l),
        ],
        ['combined: remote + q', { remote: false, q: 'acme' }, ids('fd-1100', 'fd-1106', 'xg-5000', 'xg-5006')],
        ['combined: q + skills + remote', { q: 'rust', skills: ['Rust'], remote: true }, ids('fd-1110', 'xg-5010', '4711')],
        ['combined: every filter', { provider: 'freelance.de', remote: true, q: 'security', skills: ['owasp'] }, ids('fd-1110')],
      ];
      for (const [what, filter, filterFn] of cases) {
        it(what, async (t) => {
          const c = await client(kind, t);
          const want = expectedKeys(ALL, { filterFn });
          const msg = await c.getLeads({ filter });
          assertPage(msg, { page: 1, page_size: 100, want });
          for (const p of msg.projects) {
            if (filter.remote !== undefined) assert.equal(p.remote, filter.remote);
            if (filter.provider !== undefined) assert.equal(p.provider, filter.provider);
          }
        });
      }

      it('the filter works with pages: remote leads, 3 per page, page 2', async (t) => {
        const c = await client(kind, t);
        const filterFn = (l) => l.remote === true;
        const msg = await c.getLeads({ page: 2, page_size: 3, filter: { remote: true } });
        assertPage(msg, { page: 2, page_size: 3, want: expectedKeys(ALL, { page: 2, page_size: 3, filterFn }) });
        assert.equal(msg.pagination.total, 17);
      });

      it('top-level provider is filter.provider', async (t) => {
        const c = await client(kind, t);
        const want = expectedKeys(ALL, { filterFn: (l) => l.provider === 'xing' });
        assertPage(await c.getLeads({ provider: 'xing' }), { page: 1, page_size: 100, want });
        const both = expectedKeys(ALL, { filterFn: (l) => l.provider === 'freelance.de' && l.remote === false });
        assertPage(await c.getLeads({ provider: 'freelance.de', filter: { remote: false } }), { page: 1, page_size: 100, want: both });
      });
    });

    describe('get_leads: the remembered page and filter', () => {
      it('fields left out keep their value; a new filter starts at page 1', async (t) => {
        const c = await client(kind, t);
        const remote = (l) => l.remote === true;
        const xing = (l) => l.provider === 'xing';
        // page 2 of remote leads, 5 per page
        assertPage(await c.getLeads({ page: 2, page_size: 5, filter: { remote: true } }), {
          page: 2,
          page_size: 5,
          want: expectedKeys(ALL, { page: 2, page_size: 5, filterFn: remote }),
        });
        // only page: filter and page_size stay
        assertPage(await c.getLeads({ page: 3 }), { page: 3, page_size: 5, want: expectedKeys(ALL, { page: 3, page_size: 5, filterFn: remote }) });
        // nothing: the same page again
        assertPage(await c.getLeads({}), { page: 3, page_size: 5, want: expectedKeys(ALL, { page: 3, page_size: 5, filterFn: remote }) });
        // only page_size: page and filter stay
        assertPage(await c.getLeads({ page_size: 4 }), { page: 3, page_size: 4, want: expectedKeys(ALL, { page: 3, page_size: 4, filterFn: remote }) });
        // the same filter again, without page: not a new filter, the page stays
        assertPage(await c.getLeads({ filter: { remote: true } }), {
          page: 3,
          page_size: 4,
          want: expectedKeys(ALL, { page: 3, page_size: 4, filterFn: remote }),
        });
        // a new filter without page: page 1, page_size stays; the filter is replaced as a whole
        assertPage(await c.getLeads({ filter: { provider: 'xing' } }), { page: 1, page_size: 4, want: expectedKeys(ALL, { page: 1, page_size: 4, filterFn: xing }) });
        assertPage(await c.getLeads({ page: 2 }), { page: 2, page_size: 4, want: expectedKeys(ALL, { page: 2, page_size: 4, filterFn: xing }) });
        // top-level provider changes the provider of the current filter: page 1 again
        await c.getLeads({ filter: { provider: 'xing', remote: false } });
        await c.getLeads({ page: 2, page_size: 2 });
        const fdLocal = (l) => l.provider === 'freelance.de' && l.remote === false;
        assertPage(await c.getLeads({ provider: 'freelance.de' }), { page: 1, page_size: 2, want: expectedKeys(ALL, { page: 1, page_size: 2, filterFn: fdLocal }) });
        // a new filter with a page: that page
        assertPage(await c.getLeads({ page: 2, filter: { q: 'entw' } }), {
          page: 2,
          page_size: 2,
          want: expectedKeys(ALL, { page: 2, page_size: 2, filterFn: ids('fd-1100', 'fd-1102', 'fd-1105', 'xg-5000', 'xg-5002', 'xg-5005') }),
        });
        // an empty filter clears it
        assertPage(await c.getLeads({ filter: {}, page_size: 100 }), { page: 1, page_size: 100, want: expectedKeys(ALL) });
      });

      it('each client has its own page and filter', async (t) => {
        const a = await client(kind, t);
        const b = await client(kind, t);
        await a.getLeads({ page: 2, page_size: 3, filter: { provider: 'xing' } });
        await b.getLeads({ page: 1, page_size: 7, filter: { remote: false } });
        assertPage(await a.getLeads({}), { page: 2, page_size: 3, want: expectedKeys(ALL, { page: 2, page_size: 3, filterFn: (l) => l.provider === 'xing' }) });
        assertPage(await b.getLeads({}), { page: 1, page_size: 7, want: expectedKeys(ALL, { page: 1, page_size: 7, filterFn: (l) => l.remote === false }) });
        const fresh = await client(kind, t);
        assertPage(await fresh.getLeads({}), { page: 1, page_size: 100, want: expectedKeys(ALL) });
      });
    });

    describe('get_lead_details', () => {
      function assertDetails(msg, lead, provider) {
        assert.equal(msg.type, 'lead_details');
        assert.equal(msg.project_id, String(lead.project_id), 'lead_details.project_id (a string)');
        const d = msg.details;
        assert.deepEqual(Object.keys(d).sort(), [...DETAIL_FIELDS].sort(), `details has exactly ${DETAIL_FIELDS}: ${JSON.stringify(d)}`);
        assert.equal(d.provider, provider);
        assert.equal(d.project_id, String(lead.project_id));
        for (const f of ['title', 'company', 'location', 'remote', 'rate', 'url', 'description']) assert.deepEqual(d[f], lead[f] ?? null, `details.${f}`);
        assert.deepEqual(d.skills, lead.skills ?? []);
        assert.equal(d.posted_at === null ? null : Date.parse(d.posted_at), lead.posted_at ? Date.parse(lead.posted_at) : null, 'details.posted_at');
        for (const f of ['created_at', 'updated_at']) assert.ok(!Number.isNaN(Date.parse(d[f])), `details.${f} is a timestamp: ${d[f]}`);
        const extra = Object.fromEntries(Object.entries(lead).filter(([k]) => ![...LEAD_FIELDS, 'description'].includes(k)));
        if (Object.keys(extra).length) assert.deepEqual(d.raw, extra, 'details.raw holds exactly the fields the leads table has no column for');
        else assert.ok(d.raw === null || (typeof d.raw === 'object' && Object.keys(d.raw).length === 0), `raw of a lead without extra fields: ${JSON.stringify(d.raw)}`);
      }

      it('a number project_id works; raw holds the unknown import fields', async (t) => {
        const c = await client(kind, t);
        const a = await c.ask('get_lead_details', { project_id: 4711 });
        assert.equal(a._event, 'lead_details', JSON.stringify(a));
        assertDetails(a, GULP[0], 'gulp.de');
        assert.deepEqual(a.details.raw, { budget_eur: 42000, contact: { name: 'Erika Mustermann', phone: null }, tags: ['embedded', 'iot'] });
        const s = await c.ask('get_lead_details', { project_id: '4711', provider: 'gulp.de' });
        assert.deepEqual(s.details, a.details, 'the same lead by string id and provider');
      });

      it('fixture leads: raw keeps duration_months (freelance.de) and contact (xing)', async (t) => {
        const c = await client(kind, t);
        const fd = fixture('freelance.de').find((l) => l.project_id === 'fd-1106');
        const a = await c.ask('get_lead_details', { project_id: 'fd-1106' });
        assert.equal(a._event, 'lead_details', JSON.stringify(a));
        assertDetails(a, fd, 'freelance.de');
        assert.deepEqual(a.details.raw, { duration_months: fd.duration_months });
        const xg = fixture('xing').find((l) => l.project_id === 'xg-5003');
        const b = await c.ask('get_lead_details', { project_id: 'xg-5003', provider: 'xing' });
        assertDetails(b, xg, 'xing');
        assert.deepEqual(b.details.raw, { contact: xg.contact });
      });

      it('a lead without optional fields', async (t) => {
        const c = await client(kind, t);
        const a = await c.ask('get_lead_details', { project_id: 'gp-3' });
        assert.equal(a._event, 'lead_details', JSON.stringify(a));
        assertDetails(a, GULP[2], 'gulp.de');
        assert.equal(a.details.remote, null);
        assert.equal(a.details.posted_at, null);
      });

      it('details do not change the remembered page', async (t) => {
        const c = await client(kind, t);
        await c.getLeads({ page: 2, page_size: 4, filter: { provider: 'xing' } });
        await c.ask('get_lead_details', { project_id: 'fd-1100' });
        assertPage(await c.getLeads({}), { page: 2, page_size: 4, want: expectedKeys(ALL, { page: 2, page_size: 4, filterFn: (l) => l.provider === 'xing' }) });
      });
    });

    describe('bad requests: error { detail }, and the connection stays usable', () => {
      const exact = (s) => (d) => assert.equal(d, s);
      const contains = (...parts) => (d) => assert.ok(parts.some((p) => d.includes(p)), `detail ${JSON.stringify(d)} should contain ${parts.map((p) => JSON.stringify(p)).join(' or ')}`);
      const cases = [
        ['page 0', 'get_leads', { page: 0 }, exact('page must be 1 or more')],
        ['page_size 0', 'get_leads', { page_size: 0 }, exact('page_size must be between 1 and 500')],
        ['page_size 501', 'get_leads', { page_size: 501 }, exact('page_size must be between 1 and 500')],
        ['an unknown filter key', 'get_leads', { filter: { colour: 'red' } }, contains('unknown field `colour`')],
        ['an unknown filter key next to good ones', 'get_leads', { filter: { remote: true, salary: 100 } }, contains('unknown field `salary`')],
        ['an unknown top-level key', 'get_leads', { pgae: 2 }, contains('unknown field `pgae`')],
        ['page "2" (a string)', 'get_leads', { page: '2' }, contains('invalid type')],
        ['page -1', 'get_leads', { page: -1 }, contains('invalid value', 'invalid type')],
        ['remote "yes"', 'get_leads', { filter: { remote: 'yes' } }, contains('invalid type')],
        ['filter 5', 'get_leads', { filter: 5 }, contains('invalid type', 'expects an object')],
        ['skills "rust" (not an array)', 'get_leads', { filter: { skills: 'rust' } }, contains('invalid type')],
        ['an unknown project_id', 'get_lead_details', { project_id: 'nope-1' }, exact('lead nope-1 not found')],
        ['an unknown number project_id', 'get_lead_details', { project_id: 99999 }, exact('lead 99999 not found')],
        ['a project of another provider', 'get_lead_details', { project_id: 'fd-1100', provider: 'xing' }, exact('lead fd-1100 not found')],
        ['get_lead_details without project_id', 'get_lead_details', {}, contains('project_id')],
        ['an empty project_id', 'get_lead_details', { project_id: '' }, contains('project_id')],
        ['an unknown message type', 'dance', { page: 1 }, contains('unknown variant')],
        ['sync with an unknown key', 'sync', { provider: 'xing', when: 'now' }, contains('unknown field `when`')],
      ];

      it('each bad request is answered with error + detail; the page and filter stay as they were', async (t) => {
        const c = await client(kind, t);
        const want = expectedKeys(ALL, { page: 2, page_size: 5, filterFn: (l) => l.remote === true });
        assertPage(await c.getLeads({ page: 2, page_size: 5, filter: { remote: true } }), { page: 2, page_size: 5, want });
        for (const [what, type, payload, check] of cases) {
          const detail = await c.expectError(type, payload);
          try {
            check(detail);
          } catch (err) {
            err.message = `${what}: ${err.message}`;
            throw err;
          }
          assert.ok(c.open, `${what}: the connection must stay open`);
          assertPage(await c.getLeads({}), { page: 2, page_size: 5, want });
        }
      });

      if (kind !== 'ws') {
        it('Socket.IO: a payload that is not an object', async (t) => {
          const c = await client(kind, t);
          for (const raw of [5, 'page=2', [1, 2], true]) {
            const a = await c.ask('get_leads', raw, { raw: true });
            assert.equal(a._event, 'error', `get_leads ${JSON.stringify(raw)}: ${JSON.stringify(a)}`);
            assert.match(a.detail, /expects an object|invalid type/, `get_leads ${JSON.stringify(raw)}`);
            assert.ok(c.open);
          }
          assertPage(await c.getLeads({}), { page: 1, page_size: 100, want: expectedKeys(ALL) });
        });

        it('Socket.IO: emit(event) without a payload is the same as an empty object', async (t) => {
          // The gateway documents the payload as "an object, or nothing".
          const c = await client(kind, t);
          await c.getLeads({ page: 2, page_size: 3 });
          const a = await c.ask('get_leads', undefined, { raw: true });
          assert.equal(a._event, 'leads_init', `emit('get_leads') without a payload: ${JSON.stringify(a)}`);
          assertPage(a, { page: 2, page_size: 3, want: expectedKeys(ALL, { page: 2, page_size: 3 }) });
          const s = await c.ask('sync', undefined, { raw: true });
          assert.equal(s._event, 'sync_accepted', `emit('sync') without a payload: ${JSON.stringify(s)}`);
          assert.equal(s.provider, null);
        });
      }
    });
  });
}
