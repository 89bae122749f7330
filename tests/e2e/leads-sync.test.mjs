// Leads (seed 000), the crawler side: `sync` over Socket.IO `/leads`, the
// plain WebSocket and `POST /api/v1/leads/sync` queues a durable crawl
// request; `leadgate leads claim`, `examples/crawler/crawl.sh --once` and
// `leadgate leads import --request` take and complete it; every connected
// client then gets `leads_updated` for its own page and filter. Also: many
// clients on one page share one query, `POST /api/v1/leads/events`, and bad
// import files.
//
// The gateways run without Redis: they notice imports by watching the leads
// table (about once a second).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { API_KEY, badTokens, request, sleep, token, uniqueUser } from './lib/harness.mjs';
import {
  KINDS,
  startLeadsGateway,
  connectLeads,
  closeAllLeadsClients,
  importLeads,
  leadgateCli,
  claim,
  drainRequests,
  runCrawler,
  crawlRequest,
  writeFile,
  fixture,
  fixturePath,
  expectedKeys,
  assertPage,
  keys,
  pushQueries,
} from './lib/leads.mjs';

/** What the leads table should hold: upserts keep a row's place (seq). */
class Model {
  rows = new Map();
  seq = 0;
  upsert(provider, leads) {
    for (const l of leads) {
      const k = `${provider}/${l.project_id}`;
      const old = this.rows.get(k);
      this.rows.set(k, { ...l, project_id: String(l.project_id), provider, seq: old ? old.seq : ++this.seq });
    }
  }
  get all() {
    return [...this.rows.values()];
  }
  /** The page a client with `query` looks at (filters: remote, provider, skills). */
  page({ page = 1, page_size = 100, filter = {} } = {}) {
    const filterFn = (l) =>
      (filter.remote === undefined || l.remote === filter.remote) &&
      (filter.provider === undefined || l.provider === filter.provider) &&
      (filter.skills ?? []).every((s) => (l.skills ?? []).map((x) => x.toLowerCase()).includes(s.toLowerCase()));
    return expectedKeys(this.all, { page, page_size, filterFn });
  }
}

/** Asserts that `msg` is the page `query` of the model. */
function assertModelPage(msg, model, query = {}, type = 'leads_updated') {
  const { page = 1, page_size = 100 } = query;
  assertPage(msg, { page, page_size, want: model.page(query) }, type);
}

const user = () => uniqueUser('sync');

/**
 * Opens one client per spec `{ kind, query }` (query: a get_leads payload
 * with page, page_size, filter) and moves it to its page.
 */
async function openClients(gw, t, specs) {
  const clients = [];
  for (const { kind, query, sub = user() } of specs) {
    const c = await connectLeads(gw, kind, { token: token({ sub }), name: `${kind} ${JSON.stringify(query ?? {})}` }, t);
    if (query) await c.getLeads(query);
    c.query = query ?? {};
    clients.push(c);
  }
  return clients;
}

/** Waits for the first leads_updated after message #from, for each client. */
function nextUpdates(clients, marks, timeoutMs = 10_000) {
  return Promise.all(clients.map((c, i) => c.waitFor('leads_updated', () => true, { from: marks[i], timeoutMs })));
}

/** Fails if any client received a leads_updated after its mark within `ms`. */
async function expectNoUpdate(clients, marks, ms = 1_500) {
  await sleep(ms);
  for (const [i, c] of clients.entries()) {
    const got = c.messages.slice(marks[i]).filter((m) => m.type === 'leads_updated');
    assert.equal(got.length, 0, `${c.name} must not get leads_updated, got ${JSON.stringify(got.map((m) => m.payload.pagination))}`);
  }
}

function assertSyncAccepted(msg, provider) {
  assert.equal(msg.type, 'sync_accepted', JSON.stringify(msg));
  assert.ok(Number.isInteger(msg.request_id) && msg.request_id > 0, `request_id: ${JSON.stringify(msg)}`);
  assert.equal(msg.provider, provider);
  assert.equal(msg.state, 'queued');
  const { _event, ...rest } = msg;
  assert.deepEqual(Object.keys(rest).sort(), ['provider', 'request_id', 'state', 'type']);
}

/** POST /api/v1/leads/sync with a user's JWT (or `auth` as the whole header). */
function httpSync(gw, { sub, body, rawBody, auth } = {}) {
  const headers = {};
  if (auth !== undefined) headers.authorization = auth;
  else headers.authorization = `Bearer ${token({ sub: sub ?? user() })}`;
  return request(gw, 'POST', '/api/v1/leads/sync', { body, rawBody, apiKey: null, headers });
}

describe('one gateway, crawl requests and imports', () => {
  const model = new Model();
  let gw;
  let env;

  before(async () => {
    gw = await startLeadsGateway({ env: { RUST_LOG: 'info,leadgate=debug' } });
    env = { databaseUrl: gw.db.url, gateways: [gw] };
  });

  after(async () => {
    closeAllLeadsClients();
    await gw?.stop();
  });

  it('an empty database: leads_init has page 1, 100 per page, total 0 on every transport', async (t) => {
    for (const kind of KINDS) {
      const [c] = await openClients(gw, t, [{ kind }]);
      assertModelPage(c.init, model, {}, 'leads_init');
      assert.deepEqual(c.init.pagination, { page: 1, page_size: 100, total: 0 });
    }
  });

  it('an import reaches every connected client as leads_updated for its own page and filter, and new clients in leads_init', async (t) => {
    const clients = await openClients(gw, t, [
      { kind: 'sio-websocket' },
      { kind: 'sio-polling', query: { filter: { provider: 'freelance.de' } } },
      { kind: 'ws', query: { page: 2, page_size: 4, filter: { remote: true } } },
      { kind: 'ws', query: { filter: { provider: 'xing' } } },
    ]);
    const marks = clients.map((c) => c.messages.length);
    await importLeads(env, fixturePath('freelance.de'), 'freelance.de');
    model.upsert('freelance.de', fixture('freelance.de'));
    const updates = await nextUpdates(clients, marks);
    for (const [i, c] of clients.entries()) assertModelPage(updates[i], model, c.query);
    assert.equal(updates[0].pagination.total, 12);
    assert.equal(updates[3].pagination.total, 0, 'the xing client is sent its (still empty) page');
    for (const kind of KINDS) {
      const [n] = await openClients(gw, t, [{ kind }]);
      assertModelPage(n.init, model, {}, 'leads_init');
    }
  });

  it('sync over every transport and POST /api/v1/leads/sync is accepted and durable: leads claim returns it afterwards', async (t) => {
    await drainRequests(env);
    const watcher = (await openClients(gw, t, [{ kind: 'ws' }]))[0];
    const watchMark = [watcher.messages.length];
    const asked = []; // { request_id, provider, sub }
    for (const kind of KINDS) {
      const sub = user();
      const [c] = await openClients(gw, t, [{ kind, sub }]);
      const a = await c.ask('sync', { provider: 'xing' });
      assertSyncAccepted(a, 'xing');
      asked.push({ request_id: a.request_id, provider: 'xing', sub });
      const b = await c.ask('sync', {});
      assertSyncAccepted(b, null);
      asked.push({ request_id: b.request_id, provider: null, sub });
    }
    for (const [body, provider] of [
      [{ provider: 'freelance.de' }, 'freelance.de'],
      [{}, null],
      [undefined, null],
    ]) {
      const sub = user();
      const r = await httpSync(gw, { sub, body });
      assert.equal(r.status, 202, `POST /api/v1/leads/sync ${JSON.stringify(body)}: ${r.status} ${r.text}`);
      assertSyncAccepted(r.body, provider);
      asked.push({ request_id: r.body.request_id, provider, sub });
    }
    const ids = asked.map((a) => a.request_id);
    assert.equal(new Set(ids).size, ids.length, 'every request has its own id');
    assert.deepEqual(ids, [...ids].sort((x, y) => x - y), 'ids grow');

    // Durable: the rows are there, queued, with who asked; nobody crawled.
    for (const a of asked) {
      assert.deepEqual(await crawlRequest(gw.db.url, a.request_id), {
        id: a.request_id,
        requested_by: a.sub,
        provider: a.provider,
        state: 'queued',
        claimed_by: null,
      });
    }
    // A crawler that comes later takes them, oldest first, each once.
    for (const a of asked) {
      assert.deepEqual(await claim(env, { worker: 'late-crawler' }), { request_id: a.request_id, provider: a.provider });
      assert.equal((await crawlRequest(gw.db.url, a.request_id)).state, 'running');
      assert.equal((await crawlRequest(gw.db.url, a.request_id)).claimed_by, 'late-crawler');
    }
    assert.equal(await claim(env), null, 'nothing left to claim');
    // A sync alone changes no lead: nobody was sent leads_updated.
    await expectNoUpdate([watcher], watchMark, 1_500);
  });

  it('claim --provider takes requests for that provider or for every provider, oldest first', async (t) => {
    await drainRequests(env);
    const [c] = await openClients(gw, t, [{ kind: 'sio-websocket' }]);
    const fd = (await c.ask('sync', { provider: 'freelance.de' })).request_id;
    const all = (await c.ask('sync', {})).request_id;
    const xg = (await c.ask('sync', { provider: 'xing' })).request_id;
    assert.deepEqual(await claim(env, { provider: 'xing' }), { request_id: all, provider: null });
    assert.deepEqual(await claim(env, { provider: 'xing' }), { request_id: xg, provider: 'xing' });
    assert.equal(await claim(env, { provider: 'xing' }), null, 'the freelance.de request is not for a xing crawler');
    assert.equal((await crawlRequest(gw.db.url, fd)).state, 'queued');
    assert.deepEqual(await claim(env), { request_id: fd, provider: 'freelance.de' });
  });

  it('POST /api/v1/leads/sync without a valid user token: 401 { error }', async () => {
    const cases = [
      ['no Authorization header', { auth: '' }, /missing/],
      ['a garbage token', { auth: `Bearer ${badTokens.garbage()}` }, /malformed/],
      ['an expired token', { auth: `Bearer ${badTokens.expired()}` }, /expired/],
      ['a token signed with another secret', { auth: `Bearer ${badTokens.wrongSecret()}` }, /signature/],
      ['a worker API key instead of a JWT', { auth: `Bearer ${API_KEY}` }, /invalid token/],
      ['a Basic header', { auth: 'Basic dXNlcjpwYXNz' }, /missing/],
    ];
    for (const [what, opts, re] of cases) {
      const r = await httpSync(gw, { ...opts, body: { provider: 'xing' } });
      assert.equal(r.status, 401, `${what}: ${r.status} ${r.text}`);
      assert.equal(typeof r.body?.error, 'string', `${what}: body ${r.text}`);
      assert.match(r.body.error, re, what);
    }
    assert.equal(await claim(env), null, 'a refused sync queues nothing');
  });

  it('POST /api/v1/leads/sync with a body that is not { provider? }: 400 { error }', async () => {
    for (const [what, opts] of [
      ['not JSON', { rawBody: 'provider=xing' }],
      ['an unknown field', { body: { provider: 'xing', depth: 3 } }],
      ['provider is a number', { body: { provider: 5 } }],
    ]) {
      const r = await httpSync(gw, opts);
      assert.equal(r.status, 400, `${what}: ${r.status} ${r.text}`);
      assert.equal(typeof r.body?.error, 'string', `${what}: ${r.text}`);
    }
    assert.equal(await claim(env), null, 'a refused sync queues nothing');
  });

  it('the example crawler completes a sync for xing; every client gets leads_updated for its own page and filter', async (t) => {
    await drainRequests(env);
    const clients = await openClients(gw, t, [
      { kind: 'sio-websocket' },
      { kind: 'sio-polling', query: { filter: { provider: 'xing' } } },
      { kind: 'ws', query: { page: 2, page_size: 4, filter: { remote: true } } },
      { kind: 'ws', query: { filter: { provider: 'freelance.de', skills: ['python'] } } },
      { kind: 'sio-websocket', query: { page: 3, page_size: 5 } },
    ]);
    let marks = clients.map((c) => c.messages.length);
    const r = await httpSync(gw, { body: { provider: 'xing' } });
    assert.equal(r.status, 202, r.text);
    const id = r.body.request_id;
    assert.equal((await crawlRequest(gw.db.url, id)).state, 'queued');
    await expectNoUpdate(clients, marks, 1_500);
    assert.equal((await crawlRequest(gw.db.url, id)).state, 'queued', 'still queued while no crawler runs');

    marks = clients.map((c) => c.messages.length);
    const out = await runCrawler(env);
    model.upsert('xing', fixture('xing'));
    const row = await crawlRequest(gw.db.url, id);
    assert.equal(row.state, 'done', `crawl.sh output: ${out.stdout}${out.stderr}`);
    assert.match(row.claimed_by, /^example-crawler@/);

    const updates = await nextUpdates(clients, marks);
    for (const [i, c] of clients.entries()) assertModelPage(updates[i], model, c.query);
    assert.notDeepEqual(keys(updates[0]), keys(updates[1]), 'different filters, different pages');
    assert.notDeepEqual(keys(updates[1]), keys(updates[2]));
    assert.equal(updates[0].pagination.total, 24);
    assert.equal(updates[1].pagination.total, 12);
    // What was pushed is what the client gets when it asks.
    for (const [i, c] of clients.entries()) assert.deepEqual((await c.getLeads({})).projects, updates[i].projects, c.name);
  });

  it('sync without provider over Socket.IO: the example crawler imports every provider; clients end up with fresh pages', async (t) => {
    await drainRequests(env);
    const clients = await openClients(gw, t, [
      { kind: 'sio-polling' },
      { kind: 'ws', query: { filter: { provider: 'xing', remote: false } } },
      { kind: 'sio-websocket', query: { page: 2, page_size: 4, filter: { skills: ['postgresql'] } } },
    ]);
    const a = await clients[0].ask('sync', {});
    assertSyncAccepted(a, null);
    const marks = clients.map((c) => c.messages.length);
    const started = Date.now();
    await runCrawler(env);
    model.upsert('freelance.de', fixture('freelance.de'));
    model.upsert('xing', fixture('xing'));
    assert.equal((await crawlRequest(gw.db.url, a.request_id)).state, 'done');
    // One push or two (one per provider's import): the last one holds every
    // lead re-imported by this crawl.
    const fresh = (m) => m.projects.length > 0 && m.projects.every((p) => Date.parse(p.updated_at) >= started);
    for (const [i, c] of clients.entries()) {
      const u = await c.waitFor('leads_updated', fresh, { from: marks[i], timeoutMs: 10_000 });
      assertModelPage(u, model, c.query);
    }
    assert.ok(clients[2].messages.slice(marks[2]).some((m) => m.type === 'leads_updated' && m.payload.pagination.page === 2), 'page 2 stays page 2');
  });

  it('sync over the plain WebSocket, completed by leads import --request: the new leads reach every client', async (t) => {
    await drainRequests(env);
    const clients = await openClients(gw, t, [
      { kind: 'ws' },
      { kind: 'sio-websocket', query: { filter: { provider: 'gulp.de' } } },
      { kind: 'sio-polling', query: { filter: { provider: 'xing' } } },
    ]);
    const a = await clients[0].ask('sync', { provider: 'gulp.de' });
    assertSyncAccepted(a, 'gulp.de');
    assert.deepEqual(await claim(env, { worker: 'gulp-crawler', provider: 'gulp.de' }), { request_id: a.request_id, provider: 'gulp.de' });
    const marks = clients.map((c) => c.messages.length);
    const leads = [
      { project_id: 'g-1', title: 'Flutter App', remote: true, skills: ['Dart'], posted_at: new Date().toISOString() },
      { project_id: 2, title: 'SAP Basis', remote: false, posted_at: '2020-01-01T00:00:00Z' },
    ];
    const r = await importLeads(env, leads, 'gulp.de', { request: a.request_id });
    assert.doesNotMatch(r.stderr, /no crawl request/);
    model.upsert('gulp.de', leads);
    assert.equal((await crawlRequest(gw.db.url, a.request_id)).state, 'done');
    const updates = await nextUpdates(clients, marks);
    for (const [i, c] of clients.entries()) assertModelPage(updates[i], model, c.query);
    assert.equal(keys(updates[0])[0], 'gulp.de/g-1', 'the newest lead comes first');
    assert.deepEqual(keys(updates[1]), ['gulp.de/g-1', 'gulp.de/2']);
  });

  it('POST /api/v1/leads/events with the worker key: 202, clients of that provider (and unfiltered ones) are sent their page', async (t) => {
    // Without Redis the gateway also notices table writes by polling the
    // table every second: let it see the imports of the tests before, so
    // that its push for them cannot fall into this test's window.
    await sleep(1_500);
    const clients = await openClients(gw, t, [
      { kind: 'sio-websocket' },
      { kind: 'ws', query: { filter: { provider: 'xing' }, page_size: 5 } },
      { kind: 'sio-polling', query: { filter: { provider: 'freelance.de' } } },
    ]);
    let marks = clients.map((c) => c.messages.length);
    const r = await request(gw, 'POST', '/api/v1/leads/events', { body: { type: 'leads_updated', provider: 'xing' } });
    assert.equal(r.status, 202, r.text);
    const [u0, u1] = await nextUpdates(clients.slice(0, 2), marks.slice(0, 2));
    assertModelPage(u0, model, clients[0].query);
    assertModelPage(u1, model, clients[1].query);
    await expectNoUpdate(clients.slice(2), marks.slice(2), 1_500);
    for (const [i, c] of clients.entries()) {
      assert.ok(c.messages.slice(marks[i]).filter((m) => m.type === 'leads_updated').length <= 1, `${c.name}: one push per event`);
    }

    // Without provider: everybody.
    marks = clients.map((c) => c.messages.length);
    const all = await request(gw, 'POST', '/api/v1/leads/events', { body: { type: 'leads_updated' } });
    assert.equal(all.status, 202, all.text);
    const updates = await nextUpdates(clients, marks);
    for (const [i, c] of clients.entries()) assertModelPage(updates[i], model, c.query);

    for (const [what, opts, status] of [
      ['no API key', { apiKey: null, body: { type: 'leads_updated' } }, 401],
      ['a wrong API key', { apiKey: 'not-a-key', body: { type: 'leads_updated' } }, 401],
      ['a user JWT instead of the API key', { apiKey: token({ sub: 'alice' }), body: { type: 'leads_updated' } }, 401],
      ['another type', { body: { type: 'leads_deleted' } }, 400],
      ['not JSON', { rawBody: 'leads_updated' }, 400],
    ]) {
      const res = await request(gw, 'POST', '/api/v1/leads/events', opts);
      assert.equal(res.status, status, `${what}: ${res.status} ${res.text}`);
    }
  });

  it('bad import files: leads import exits non-zero, names the lead, and changes nothing', async (t) => {
    const [c] = await openClients(gw, t, [{ kind: 'ws' }]);
    const before = await c.getLeads({});
    assertModelPage(before, model, {}, 'leads_init');
    const mark = [c.messages.length];
    const ok = (id) => ({ project_id: id, title: `Valid lead ${id}`, remote: true, posted_at: '2030-01-01T00:00:00Z' });
    const cases = [
      ['not JSON', 'this is not json', /not a JSON array of leads/],
      ['an object, not an array', { project_id: 'x', title: 'y' }, /not a JSON array of leads/],
      ['a lead without title', [ok('bad-1'), { project_id: 'bad-2' }], /lead 1: title is missing/],
      ['a lead without project_id', [{ title: 'No id' }], /lead 0: project_id is missing/],
      ['remote "yes"', [ok('bad-3'), ok('bad-4'), { project_id: 'bad-5', title: 't', remote: 'yes' }], /lead 2: remote must be true or false/],
      ['skills a string', [ok('bad-6'), { project_id: 'bad-7', title: 't', skills: 'Rust' }], /lead 1: skills must be an array of strings/],
      ['skills with a number', [{ project_id: 'bad-8', title: 't', skills: ['Rust', 5] }], /lead 0: skills must be an array of strings/],
      ['posted_at not RFC 3339', [ok('bad-9'), { project_id: 'bad-10', title: 't', posted_at: 'gestern' }], /lead 1: posted_at must be an RFC 3339 timestamp/],
      ['title an object', [{ project_id: 'bad-11', title: { de: 'x' } }], /lead 0: title must be a string/],
      ['a lead that is not an object', [ok('bad-12'), 'lead'], /lead 1: not a JSON object/],
    ];
    for (const [what, content, re] of cases) {
      const file = writeFile(content);
      const r = await leadgateCli(['leads', 'import', file, '--provider', 'bad.example'], env);
      assert.notEqual(r.code, 0, `${what}: must exit non-zero; stdout ${r.stdout}`);
      assert.match(r.stderr, re, `${what}: stderr ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /panicked|RUST_BACKTRACE|stack backtrace/, what);
      assert.doesNotMatch(r.stdout, /Imported/, what);
    }
    const missing = await leadgateCli(['leads', 'import', '/nonexistent/leads.json', '--provider', 'bad.example'], env);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /cannot read \/nonexistent\/leads.json/);
    const noProvider = await leadgateCli(['leads', 'import', writeFile([ok('bad-13')]), '--provider', '  '], env);
    assert.notEqual(noProvider.code, 0);
    assert.match(noProvider.stderr, /provider/);

    // Nothing changed: the same page, no lead of the bad files, no push.
    assert.deepEqual(await c.getLeads({}), before);
    for (const id of ['bad-1', 'bad-3', 'bad-6', 'bad-9', 'bad-12', 'bad-13']) {
      assert.equal(await c.expectError('get_lead_details', { project_id: id }), `lead ${id} not found`);
    }
    assert.equal((await c.getLeads({ filter: { provider: 'bad.example' } })).pagination.total, 0);
    await expectNoUpdate([c], mark, 1_500);
  });
});

describe('many clients on one page share one query', () => {
  let gw;
  let env;
  const model = new Model();

  before(async () => {
    gw = await startLeadsGateway({ env: { RUST_LOG: 'info,leadgate=debug' } });
    env = { databaseUrl: gw.db.url, gateways: [gw] };
    await importLeads(env, fixturePath('freelance.de'), 'freelance.de');
    model.upsert('freelance.de', fixture('freelance.de'));
  });

  after(async () => {
    closeAllLeadsClients();
    await gw?.stop();
  });

  it('50 clients on the default page and 10 on provider xing: one import, queries=2, every client its page', async (t) => {
    const specs = [];
    for (let i = 0; i < 50; i++) specs.push({ kind: ['sio-websocket', 'sio-polling', 'ws'][i % 3] });
    for (let i = 0; i < 10; i++) specs.push({ kind: ['ws', 'sio-websocket'][i % 2], query: { filter: { provider: 'xing' } } });
    const clients = await Promise.all(
      specs.map(async ({ kind, query }) => {
        const c = await connectLeads(gw, kind, { token: token({ sub: user() }), name: `${kind} ${JSON.stringify(query ?? {})}` }, t);
        if (query) await c.getLeads(query);
        c.query = query ?? {};
        return c;
      }),
    );
    for (const c of clients) assertModelPage(c.init, model, {}, 'leads_init');
    // Let the watcher settle on the table as it is before the import.
    await sleep(1_200);
    const marks = clients.map((c) => c.messages.length);
    const logMark = gw.output().length;

    await importLeads(env, fixturePath('xing'), 'xing');
    model.upsert('xing', fixture('xing'));
    const updates = await nextUpdates(clients, marks, 15_000);
    for (const [i, c] of clients.entries()) assertModelPage(updates[i], model, c.query);
    assert.equal(updates[0].pagination.total, 24);
    assert.equal(updates[55].pagination.total, 12);

    // The debug line of the push is written after the last client was sent its page.
    let queries = [];
    for (let i = 0; i < 20 && queries.length === 0; i++) {
      queries = pushQueries(gw.output().slice(logMark));
      if (queries.length === 0) await sleep(100);
    }
    assert.ok(queries.length >= 1, `no "Pushed leads_updated." line after the import:\n${gw.output().slice(logMark).slice(-3000)}`);
    assert.deepEqual(queries, queries.map(() => 2), `every push after the import read 2 pages (one per page and filter), got queries=${queries}`);
    for (const [i, c] of clients.entries()) {
      assert.equal(c.messages.slice(marks[i]).filter((m) => m.type === 'leads_updated').length, queries.length, `${c.name}: one leads_updated per push`);
    }
  });
});
