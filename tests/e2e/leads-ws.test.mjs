// The plain WebSocket `/ws/leads/` (seed 000's Django Channels endpoint),
// what only it has: both paths, frames that are not JSON objects, binary
// frames, the order of token sources, and refusals as an error frame
// followed by close code 1008. The scenarios it shares with Socket.IO
// `/leads` are in leads.test.mjs.
import { it, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { badTokens, token, uniqueUser, sleep } from './lib/harness.mjs';
import {
  startLeadsGateway,
  connectLeads,
  refusedLeads,
  closeAllLeadsClients,
  importLeads,
  fixture,
  fixturePath,
  expectedKeys,
  assertPage,
} from './lib/leads.mjs';

const ALL = [];
let gw;

before(async () => {
  gw = await startLeadsGateway();
  await importLeads({ databaseUrl: gw.db.url, gateways: [gw] }, fixturePath('xing'), 'xing');
  fixture('xing').forEach((l, i) => ALL.push({ ...l, provider: 'xing', seq: i + 1 }));
});

after(async () => {
  closeAllLeadsClients();
  await gw?.stop();
});

const good = () => token({ sub: uniqueUser('ws') });
const ws = (t, opts = {}) => connectLeads(gw, 'ws', { token: good(), ...opts }, t);

describe('paths and frames', () => {
  for (const path of ['/ws/leads/', '/ws/leads']) {
    it(`${path}: leads_init first, then one JSON answer frame per request`, async (t) => {
      const c = await ws(t, { path });
      assertPage(c.init, { page: 1, page_size: 100, want: expectedKeys(ALL) });
      const page = await c.getLeads({ page: 2, page_size: 5 });
      assertPage(page, { page: 2, page_size: 5, want: expectedKeys(ALL, { page: 2, page_size: 5 }) });
      const d = await c.ask('get_lead_details', { project_id: 'xg-5005' });
      assert.equal(d.type, 'lead_details');
      assert.equal(d.details.provider, 'xing');
      assert.deepEqual(
        c.messages.map((m) => m.type),
        ['leads_init', 'leads_init', 'lead_details'],
      );
    });
  }

  it('frames that are not a JSON object each get an error frame; the connection stays open and answers', async (t) => {
    const c = await ws(t);
    await c.getLeads({ page: 2, page_size: 3, filter: { remote: true } });
    const want = expectedKeys(ALL, { page: 2, page_size: 3, filterFn: (l) => l.remote === true });
    const cases = [
      ['not JSON', 'hello leads', (d) => assert.match(d, /^frame is not valid JSON: /)],
      ['truncated JSON', '{"type":"get_leads","page":', (d) => assert.match(d, /^frame is not valid JSON: /)],
      ['an empty frame', '', (d) => assert.match(d, /^frame is not valid JSON: /)],
      ['a JSON array', '[{"type":"get_leads"}]', (d) => assert.match(d, /JSON object/)],
      ['a JSON string', '"get_leads"', (d) => assert.match(d, /JSON object/)],
      ['a JSON number', '42', (d) => assert.match(d, /JSON object/)],
      ['an object without type', '{"page":1}', (d) => assert.match(d, /missing field `type`/)],
      ['type is not a string', '{"type":7}', (d) => assert.ok(d.length > 0)],
      ['an unknown type', '{"type":"subscribe-job"}', (d) => assert.match(d, /unknown variant/)],
      ['a binary frame', Buffer.from('{"type":"get_leads"}'), (d) => assert.match(d, /binary/i)],
      ['a binary frame of bytes', Buffer.from([0, 159, 146, 150]), (d) => assert.match(d, /binary/i)],
    ];
    for (const [what, raw, check] of cases) {
      const detail = await c.expectError(null, raw, { raw: true });
      try {
        check(detail);
      } catch (err) {
        err.message = `${what}: ${err.message}`;
        throw err;
      }
      assert.ok(c.open, `${what}: the connection must stay open`);
      assertPage(await c.getLeads({}), { page: 2, page_size: 3, want });
    }
    assert.equal(c.closed, null, 'the server never closed the connection');
  });

  it('a request in pieces of a stream of frames: every frame is answered, in order', async (t) => {
    const c = await ws(t);
    const mark = c.messages.length;
    for (let page = 1; page <= 6; page++) c.send('get_leads', { page, page_size: 2 });
    c.sendRaw('nonsense');
    c.send('get_lead_details', { project_id: 'xg-5000' });
    await c.waitFor('lead_details', () => true, { from: mark });
    const answers = c.messages.slice(mark);
    assert.deepEqual(
      answers.map((m) => (m.type === 'leads_init' ? `page ${m.payload.pagination.page}` : m.type)),
      ['page 1', 'page 2', 'page 3', 'page 4', 'page 5', 'page 6', 'error', 'lead_details'],
    );
    for (const m of answers.slice(0, 6)) {
      const p = m.payload.pagination.page;
      assertPage(m.payload, { page: p, page_size: 2, want: expectedKeys(ALL, { page: p, page_size: 2 }) });
    }
  });
});

describe('authentication', () => {
  const sources = ['query', 'header', 'cookie'];
  for (const source of sources) {
    it(`token from ${source}`, async (t) => {
      const c = await ws(t, { source });
      assertPage(c.init, { page: 1, page_size: 100, want: expectedKeys(ALL) });
    });

    for (const [what, tok, detail] of [
      ['garbage', badTokens.garbage(), 'invalid token: malformed'],
      ['expired', badTokens.expired(), 'invalid token: expired'],
      ['wrong secret', badTokens.wrongSecret(), 'invalid token: bad signature'],
    ]) {
      it(`${what} token from ${source}: one error frame, then close 1008`, async () => {
        const err = await refusedLeads(gw, 'ws', { token: tok, source });
        assert.equal(err.message, detail);
        assert.equal(err.closeCode, 1008);
        assert.deepEqual(err.frames, [{ type: 'error', detail }]);
      });
    }
  }

  it('no token: "authentication required: missing token", close 1008', async () => {
    for (const opts of [{}, { query: { token: '' } }, { headers: { cookie: 'token=; theme=dark' } }, { headers: { authorization: 'Basic dXNlcjpwYXNz' } }]) {
      const err = await refusedLeads(gw, 'ws', opts);
      assert.equal(err.message, 'authentication required: missing token', JSON.stringify(opts));
      assert.equal(err.closeCode, 1008);
      assert.deepEqual(err.frames, [{ type: 'error', detail: err.message }]);
    }
  });

  it('a refused client receives nothing after the error frame', async () => {
    const err = await refusedLeads(gw, 'ws', { token: badTokens.garbage() });
    const c = err.client;
    assert.equal(c.messages.length, 1);
    assert.ok(!c.open);
    await sleep(100);
    assert.equal(c.messages.length, 1);
  });

  it('the Authorization header comes before ?token=, which comes before the cookie', async (t) => {
    // The first source present is the one used: a bad one there is refused
    // even when a later source holds a good token.
    const tok = good();
    await ws(t, { source: 'header', query: { token: badTokens.garbage() } });
    await ws(t, { source: 'query', headers: { cookie: `token=${badTokens.garbage()}` } });
    assert.equal((await refusedLeads(gw, 'ws', { source: 'cookie', token: tok, query: { token: badTokens.garbage() } })).message, 'invalid token: malformed');
    assert.equal(
      (await refusedLeads(gw, 'ws', { source: 'query', token: tok, headers: { authorization: `Bearer ${badTokens.expired()}` } })).message,
      'invalid token: expired',
    );
  });
});
