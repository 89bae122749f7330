// Cluster end-to-end tests of the leads (seed 000): three leadgate
// processes on one PostgreSQL database and one Redis prefix, leads clients
// on every instance — Socket.IO `/leads` (WebSocket and long-polling) and the
// plain WebSocket `/ws/leads/` — and crawlers that announce their imports
// through Redis (`leadgate leads import` with LEADGATE_REDIS_URL, or
// `POST /api/v1/leads/events` on any one instance).
//
//   node --test --test-concurrency=1 tests/e2e/cluster/     (from the repository root)
//
// With Redis the gateways do not watch the leads table: a push happens once
// per announcement, and only to clients whose filter can be concerned
// (no provider filter, or the announced provider).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { API_KEY, checkSharedRedis, createDatabase, sleep, startCluster, token, uniqueUser } from './lib/cluster.mjs';
import { request } from '../lib/harness.mjs';
import {
  connectLeads,
  closeAllLeadsClients,
  importLeads,
  claim,
  crawlRequest,
  fixture,
  fixturePath,
  expectedKeys,
  assertPage,
} from '../lib/leads.mjs';

let db;

before(async () => {
  await checkSharedRedis();
  db = await createDatabase();
});

after(async () => {
  closeAllLeadsClients();
  await db?.drop();
});

/** What the leads table holds (upserts keep a row's place). */
const rows = new Map();
let seq = 0;
function upsert(provider, leads) {
  for (const l of leads) {
    const k = `${provider}/${l.project_id}`;
    rows.set(k, { ...l, project_id: String(l.project_id), provider, seq: rows.get(k)?.seq ?? ++seq });
  }
}
function want({ page = 1, page_size = 100, filter = {} } = {}) {
  return expectedKeys([...rows.values()], {
    page,
    page_size,
    filterFn: (l) =>
      (filter.remote === undefined || l.remote === filter.remote) && (filter.provider === undefined || l.provider === filter.provider),
  });
}
function assertClientPage(msg, c, type = 'leads_updated') {
  const { page = 1, page_size = 100 } = c.query;
  assertPage(msg, { page, page_size, want: want(c.query) }, type);
}

/** Starts a cluster for one test and stops it when the test ends. */
async function cluster(t) {
  const c = await startCluster({ database: db, size: 3 });
  t.after(async () => {
    closeAllLeadsClients();
    await c.stop();
    if (t.passed === false || process.env.LEADGATE_E2E_VERBOSE) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leadgate-cluster-logs-'));
      for (const g of c.gateways) {
        const file = path.join(dir, `${g.name}-${g.port}.log`);
        fs.writeFileSync(file, g.output());
        t.diagnostic(`${g.name} output: ${file}`);
      }
    }
  });
  return c;
}

/** The crawler tools' environment: the cluster's database and Redis prefix. */
const crawlerEnv = (c) => ({ databaseUrl: db.url, redisUrl: c.redisUrl, prefix: c.prefix });

/**
 * On every instance: clients of both protocols and both Socket.IO
 * transports, on the default page and on filters; `concerned(provider)`
 * tells whether a client's filter can see leads of that provider.
 */
const SPECS = [
  { kind: 'sio-websocket', query: {} },
  { kind: 'sio-polling', query: { filter: { provider: 'xing' } } },
  { kind: 'ws', query: { page: 2, page_size: 5, filter: { remote: true } } },
  { kind: 'ws', query: { filter: { provider: 'freelance.de' } } },
  { kind: 'sio-websocket', query: { filter: { provider: 'freelance.de', remote: true } } },
  { kind: 'ws', query: {}, source: 'cookie' },
  { kind: 'sio-polling', query: { page: 3, page_size: 4 } },
];

async function openClients(c) {
  const clients = [];
  for (const gw of c.gateways) {
    for (const spec of SPECS) {
      const client = await connectLeads(gw, spec.kind, {
        token: token(uniqueUser('leads')),
        source: spec.source,
        name: `${gw.name} ${spec.kind} ${JSON.stringify(spec.query)}`,
      });
      if (Object.keys(spec.query).length) await client.getLeads(spec.query);
      client.query = spec.query;
      client.gw = gw;
      client.concerned = (provider) => provider === undefined || spec.query.filter?.provider === undefined || spec.query.filter.provider === provider;
      clients.push(client);
    }
  }
  for (const cl of clients) cl.mark = cl.messages.length;
  return clients;
}

const updatesSinceMark = (cl) => cl.messages.slice(cl.mark).filter((m) => m.type === 'leads_updated').map((m) => m.payload);

/**
 * After an announcement for `provider`: every concerned client gets exactly
 * one leads_updated with its own page; every other client gets none (checked
 * for `quietMs` after the last concerned client got its page).
 */
async function expectOnePushEach(clients, provider, { quietMs = 1_500 } = {}) {
  const concerned = clients.filter((cl) => cl.concerned(provider));
  const others = clients.filter((cl) => !cl.concerned(provider));
  assert.ok(concerned.length > 0 && (provider === undefined || others.length > 0));
  const got = await Promise.all(concerned.map((cl) => cl.waitFor('leads_updated', () => true, { from: cl.mark, timeoutMs: 10_000 })));
  for (const [i, cl] of concerned.entries()) assertClientPage(got[i], cl);
  await sleep(quietMs);
  for (const cl of concerned) assert.equal(updatesSinceMark(cl).length, 1, `${cl.name}: exactly one leads_updated`);
  for (const cl of others) assert.deepEqual(updatesSinceMark(cl), [], `${cl.name}: its filter names another provider than ${provider}`);
  for (const cl of clients) cl.mark = cl.messages.length;
  return { concerned, others };
}

test('1: leads import --provider xing with Redis: every client on every instance gets its own page once; freelance.de filters get nothing', { timeout: 120_000 }, async (t) => {
  const c = await cluster(t);
  await importLeads(crawlerEnv(c), fixturePath('freelance.de'), 'freelance.de');
  upsert('freelance.de', fixture('freelance.de'));
  // Its announcement is pushed (to nobody yet) before the clients connect.
  await sleep(500);
  const clients = await openClients(c);
  for (const cl of clients) {
    assert.equal(cl.messages[0].type, 'leads_init');
    assertClientPage(cl.of('leads_init').at(-1), cl, 'leads_init');
  }

  const r = await importLeads(crawlerEnv(c), fixturePath('xing'), 'xing');
  assert.match(r.stdout, /announced/);
  upsert('xing', fixture('xing'));
  const { concerned, others } = await expectOnePushEach(clients, 'xing');
  assert.equal(concerned.length, 5 * 3);
  assert.equal(others.length, 2 * 3);
  for (const gw of c.gateways) assert.ok(concerned.some((cl) => cl.gw === gw && cl.kind === 'ws') && concerned.some((cl) => cl.gw === gw && cl.kind !== 'ws'));
});

test('2: leads import --provider freelance.de with Redis: xing filters get nothing, the rest their page once', { timeout: 120_000 }, async (t) => {
  const c = await cluster(t);
  const clients = await openClients(c);
  const changed = fixture('freelance.de').map((l) => (l.project_id === 'fd-1105' ? { ...l, remote: false, title: 'Vue.js Entwickler (vor Ort)' } : l));
  await importLeads(crawlerEnv(c), changed, 'freelance.de');
  upsert('freelance.de', changed);
  const { others } = await expectOnePushEach(clients, 'freelance.de');
  assert.ok(others.every((cl) => cl.query.filter?.provider === 'xing'));
  // The changed lead is where it should be on every instance.
  const local = clients.find((cl) => cl.query.filter?.provider === 'freelance.de' && cl.query.filter.remote === undefined);
  const lead = local.of('leads_updated').at(-1).projects.find((p) => p.project_id === 'fd-1105');
  assert.equal(lead.remote, false);
  assert.equal(lead.title, 'Vue.js Entwickler (vor Ort)');
});

test('3: sync on two instances, claimed and imported with --request: clients on every instance updated once, request done', { timeout: 120_000 }, async (t) => {
  const c = await cluster(t);
  const clients = await openClients(c);
  const asker = clients.find((cl) => cl.gw === c.gateways[1] && cl.kind === 'ws');
  const a = await asker.ask('sync', { provider: 'xing' });
  assert.equal(a.type, 'sync_accepted', JSON.stringify(a));
  assert.equal(a.state, 'queued');
  const h = await request(c.gateways[2], 'POST', '/api/v1/leads/sync', {
    apiKey: null,
    headers: { authorization: `Bearer ${token(uniqueUser('http'))}` },
    body: { provider: 'freelance.de' },
  });
  assert.equal(h.status, 202, h.text);
  assert.equal((await crawlRequest(db.url, a.request_id)).state, 'queued');
  for (const cl of clients) cl.mark = cl.messages.length;

  assert.deepEqual(await claim(crawlerEnv(c), { worker: 'xing-crawler', provider: 'xing' }), { request_id: a.request_id, provider: 'xing' });
  const leads = fixture('xing').map((l) => ({ ...l, rate: '120 €/h' }));
  await importLeads(crawlerEnv(c), leads, 'xing', { request: a.request_id });
  upsert('xing', leads);
  assert.equal((await crawlRequest(db.url, a.request_id)).state, 'done');
  assert.equal((await crawlRequest(db.url, h.body.request_id)).state, 'queued', 'the freelance.de request is still waiting for its crawler');
  await expectOnePushEach(clients, 'xing');

  assert.deepEqual(await claim(crawlerEnv(c)), { request_id: h.body.request_id, provider: 'freelance.de' });
});

test('4: POST /api/v1/leads/events on one instance reaches the clients of every instance through Redis', { timeout: 120_000 }, async (t) => {
  const c = await cluster(t);
  const clients = await openClients(c);
  const r = await request(c.gateways[2], 'POST', '/api/v1/leads/events', { apiKey: API_KEY, body: { type: 'leads_updated', provider: 'xing' } });
  assert.equal(r.status, 202, r.text);
  await expectOnePushEach(clients, 'xing');
  const all = await request(c.gateways[0], 'POST', '/api/v1/leads/events', { apiKey: API_KEY, body: { type: 'leads_updated' } });
  assert.equal(all.status, 202, all.text);
  await expectOnePushEach(clients, undefined);
});
