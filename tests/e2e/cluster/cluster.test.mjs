// Cluster end-to-end tests: several leadgate processes on one PostgreSQL
// database and one Redis, browsers on the stock socket.io-client v4, workers
// that publish through Redis, nginx in front with deploy/nginx.conf as it
// ships, a Redis restart, SIGKILL and SIGTERM.
//
//   node --test tests/e2e/cluster/          (from the repository root)
//
// Needs the built binary (target/debug/leadgate or LEADGATE_BIN), PostgreSQL
// on 127.0.0.1:5432 (user postgres, trust), Redis on 127.0.0.1:6379, the
// `redis-server` and `nginx` binaries, and `npm ci` in tests/e2e and
// examples/node-worker.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { request } from '../lib/harness.mjs';
import { connectLeads } from '../lib/leads.mjs';
import {
  API_KEY,
  REPO_ROOT,
  Client,
  RedisServer,
  checkSharedRedis,
  createDatabase,
  sleep,
  startCluster,
  token,
  uniquePrefix,
  uniqueUser,
  until,
} from './lib/cluster.mjs';

const UPDATE_TYPES = ['progress', 'status', 'log', 'complete', 'error'];
const WORKER = path.join(REPO_ROOT, 'examples', 'node-worker', 'worker.mjs');

let db;

before(async () => {
  await checkSharedRedis();
  db = await createDatabase();
});

after(async () => {
  await db?.drop();
});

/** Starts a cluster for one test and stops it when the test ends. */
async function cluster(t, opts = {}) {
  const c = await startCluster({ database: db, ...opts });
  t.after(async () => {
    await c.stop();
    if (t.passed === false || process.env.LEADGATE_E2E_VERBOSE) {
      // Each gateway's whole output, for the post-mortem.
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

/** Connected clients, one at a time (so the load balancer's order is known). */
async function connectAll(specs) {
  const clients = [];
  for (const { url, ...opts } of specs) clients.push(await new Client(url, opts).connected());
  return clients;
}

function assertNoStreamProblems(clients, jobId) {
  for (const c of clients) {
    const problems = c.streamProblems(jobId);
    assert.deepEqual(problems, [], `${c.name}: ${problems.join('; ')}\nevents: ${summarize(c)}`);
  }
}

function summarize(client) {
  return JSON.stringify(
    client.events.map((e) =>
      e.type === 'job-status' || e.type === 'job-update'
        ? [e.type, e.payload?.jobId?.slice(0, 8), e.payload?.seq, e.payload?.type ?? e.payload?.status]
        : [e.type, typeof e.payload === 'string' ? e.payload : e.payload?.message],
    ),
  ).slice(0, 6000);
}

/**
 * Runs examples/node-worker/worker.mjs against `database` and Redis. Resolves
 * `{ jobId, done }` once it printed the job id; `done` resolves with its exit.
 */
async function runWorker(c, args, [program, programArgs] = [process.execPath, [WORKER]]) {
  if (program === process.execPath && !fs.existsSync(path.join(REPO_ROOT, 'examples', 'node-worker', 'node_modules'))) {
    throw new Error('examples/node-worker has no node_modules: run `npm ci --prefix examples/node-worker`');
  }
  const child = spawn(program, [...programArgs, ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, DATABASE_URL: db.url, REDIS_URL: c.redisUrl, LEADGATE_REDIS_PREFIX: c.prefix },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const done = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, out, err })));
  const jobId = await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n');
      if (line.length > 1) resolve(line[0].trim());
    });
    child.once('error', reject);
    done.then(({ code }) => reject(new Error(`worker ${args.join(' ')} exited (${code}) before printing a job id: ${err}`)));
  });
  return { jobId, done, child };
}

async function waitForState(clients, jobId, seq, timeoutMs, what) {
  await until(() => clients.every((c) => c.latestSeq(jobId) >= seq), {
    timeoutMs,
    what: `${what}: every client at seq ${seq} of ${jobId} (now ${clients.map((c) => `${c.name}=${c.latestSeq(jobId)}`).join(' ')})`,
  });
}

// ---------------------------------------------------------------------------
// 1. Fan-out from a worker that publishes through Redis
// ---------------------------------------------------------------------------

test('1: three instances, example worker publishing through Redis: every client gets every update of its job once, in order', { timeout: 180_000 }, async (t) => {
  const c = await cluster(t);
  const [alice, bob] = [uniqueUser('alice'), uniqueUser('bob')];
  const jobA = await c.gateways[0].createJob(alice, 20); // subscribed before the worker starts
  const jobC = await c.gateways[1].createJob(alice, 5); // never gets an event

  const specs = [];
  for (const g of c.gateways) {
    specs.push(
      { url: g.url, user: alice, name: `${g.name}-A-early`, cluster: c },
      { url: g.url, user: alice, name: `${g.name}-A-late`, cluster: c },
      { url: g.url, user: bob, name: `${g.name}-B`, cluster: c },
      { url: g.url, user: alice, name: `${g.name}-C-idle`, cluster: c },
    );
  }
  const clients = await connectAll(specs);
  const byRole = (role) => clients.filter((x) => x.name.endsWith(role));
  const [aEarly, aLate, bClients, cIdle] = ['-A-early', '-A-late', '-B', '-C-idle'].map(byRole);

  for (const x of aEarly) assert.equal((await x.subscribe(jobA)).seq, 0, `${x.name}: a fresh job has seq 0`);
  for (const x of cIdle) await x.subscribe(jobC);

  // Two jobs at once: A (given, completes) and B (created by the worker, fails).
  const started = Date.now();
  const workerA = await runWorker(c, ['--user', alice, '--leads', '20', '--delay', '50', '--job', jobA]);
  assert.equal(workerA.jobId, jobA, 'the worker prints the job id it was given');
  const workerB = await runWorker(c, ['--user', bob, '--leads', '20', '--delay', '50', '--fail']);
  const jobB = workerB.jobId;
  // B's subscribers come in while the worker is already publishing.
  const bStatus = await Promise.all(bClients.map((x) => x.subscribe(jobB)));
  // A's late subscribers, once A is under way.
  await until(() => aEarly[0].updates(jobA).length >= 5, { timeoutMs: 20_000, what: 'five updates of job A' });
  const aLateStatus = await Promise.all(aLate.map((x) => x.subscribe(jobA)));

  const [exitA, exitB] = await Promise.all([workerA.done, workerB.done]);
  assert.equal(exitA.code, 0, `worker A failed: ${exitA.err}`);
  assert.equal(exitB.code, 0, `worker B failed: ${exitB.err}`);
  const truthA = await db.job(jobA);
  const truthB = await db.job(jobB);
  assert.equal(truthA.status, 'completed');
  assert.equal(truthB.status, 'failed');
  assert.equal(truthA.seq, 42, 'worker A: status + 20 × (log + progress) + complete');
  assert.equal(truthB.seq, 22, 'worker B: status + 10 × (log + progress) + error');

  const aClients = [...aEarly, ...aLate];
  await waitForState(aClients, jobA, truthA.seq, 20_000, 'job A');
  await waitForState(bClients, jobB, truthB.seq, 20_000, 'job B');
  await sleep(500); // duplicates or strays would show up now
  t.diagnostic(`both workers done and delivered everywhere ${Date.now() - started} ms after the start`);
  t.diagnostic(`job B subscribers started at seq ${bStatus.map((s) => s.seq)}; late A subscribers at seq ${aLateStatus.map((s) => s.seq)}`);

  const check = (x, jobId, truth, finalType) => {
    const statuses = x.of('job-status').map((e) => e.payload);
    assert.equal(statuses.length, 1, `${x.name}: exactly one job-status (no refresh needed): ${summarize(x)}`);
    assert.equal(statuses[0].jobId, jobId);
    const updates = x.of('job-update').map((e) => e.payload);
    for (const u of updates) {
      assert.equal(u.jobId, jobId, `${x.name} received an update of another job: ${JSON.stringify(u)}`);
      assert.ok(UPDATE_TYPES.includes(u.type), `${x.name}: unknown update type ${JSON.stringify(u)}`);
    }
    const expected = [];
    for (let s = statuses[0].seq + 1; s <= truth.seq; s++) expected.push(s);
    assert.deepEqual(
      updates.map((u) => u.seq),
      expected,
      `${x.name}: job-updates must be exactly seq ${statuses[0].seq + 1}..${truth.seq}, once each, in order`,
    );
    assert.ok(expected.length > 0, `${x.name} subscribed too late to see any update (status seq ${statuses[0].seq})`);
    assert.equal(updates.at(-1).type, finalType, `${x.name}: the last update is ${finalType}`);
    assert.equal(x.count('disconnect'), 0, `${x.name} was disconnected`);
    assert.equal(x.count('error'), 0, `${x.name} got an error: ${summarize(x)}`);
  };
  for (const x of aClients) check(x, jobA, truthA, 'complete');
  for (const x of bClients) check(x, jobB, truthB, 'error');
  assert.ok(aLateStatus.some((s) => s.seq > 0), 'late subscribers of A joined mid-job');
  for (const x of cIdle) {
    assert.equal(x.count('job-status'), 1);
    assert.deepEqual(x.updates(), [], `${x.name} (subscribed to an idle job of the same user) must receive no job-update`);
  }
  const last = aEarly[0].updates(jobA).at(-1);
  assert.deepEqual(last.results, { processed_leads: 20, enriched_leads: 20, high_score_leads: 6 });
  assert.equal(bClients[0].updates(jobB).at(-1).error, 'Enrichment provider unreachable');
});

// ---------------------------------------------------------------------------
// 2. Redis stopped and started again
// ---------------------------------------------------------------------------

test('2: Redis restart: clients stay connected, converge to the true state, and fan-out resumes', { timeout: 180_000 }, async (t) => {
  const redis = await RedisServer.start();
  t.after(() => redis.kill());
  const c = await cluster(t, { redisUrl: redis.url, prefix: uniquePrefix('restart') });
  const [g0, g1, g2] = c.gateways;
  const user = uniqueUser('alice');
  const job = await g0.createJob(user, 100);
  const probeJob = await g0.createJob(user, 0);

  const clients = await connectAll(
    c.gateways.flatMap((g) => [1, 2].map((i) => ({ url: g.url, user, name: `${g.name}-${i}`, cluster: c }))),
  );
  for (const x of clients) {
    await x.subscribe(job);
    await x.subscribe(probeJob);
  }

  // Fan-out works to begin with: an event posted on any instance reaches all.
  await g0.postEvent(job, { type: 'status', status: 'processing', message: 'started' });
  await g1.postLog(job, 'before 1');
  await g2.postLog(job, 'before 2');
  await waitForState(clients, job, 3, 10_000, 'before the outage');

  // Redis dies.
  const killedAt = Date.now();
  await redis.kill();
  const readyDown = await until(
    async () => {
      const all = await Promise.all(c.gateways.map((g) => g.readyz()));
      return all.every((r) => r.status === 503) && all;
    },
    { timeoutMs: 20_000, what: 'every instance to answer /readyz 503 with Redis down' },
  );
  t.diagnostic(`/readyz 503 on every instance ${Date.now() - killedAt} ms after Redis was killed: ${JSON.stringify(readyDown.map((r) => r.body))}`);
  for (const r of readyDown) {
    assert.ok(['unsubscribed', 'unreachable'].includes(r.body?.redis), `readyz body while Redis is down: ${JSON.stringify(r.body)}`);
    assert.equal(r.body?.database, 'ok');
  }

  // Events while Redis is down, on every instance.
  const postTimes = [];
  let progress = 0;
  for (let round = 0; round < 2; round++) {
    for (const g of c.gateways) {
      const t0 = Date.now();
      progress += 10;
      await g.postEvent(job, { type: 'progress', progress, processedLeads: progress, totalLeads: 100 });
      postTimes.push(Date.now() - t0);
    }
  }
  t.diagnostic(`6 events posted while Redis was down; each POST took ${postTimes.join(', ')} ms`);
  await sleep(1_000);
  const during = await db.job(job);
  assert.equal(during.seq, 9, 'every event posted during the outage was applied');

  // Redis comes back on the same port. From that moment, probe events of a
  // second job are posted on one instance every 100 ms: fan-out has resumed
  // once one of them reaches every client on every instance as a job-update.
  // Meanwhile the first job gets no event, so its convergence is measured
  // on its own.
  await redis.resume();
  const restartedAt = Date.now();
  const probing = (async () => {
    const posted = [];
    for (;;) {
      if (Date.now() - restartedAt > 30_000) throw new Error(`fan-out did not resume within 30 s of the restart (probes ${JSON.stringify(posted)})`);
      posted.push((await g0.postLog(probeJob, `probe ${posted.length + 1}`)).seq);
      await sleep(100);
      for (const seq of posted) {
        const got = clients.map((x) => x.of('job-update').find((e) => e.payload?.jobId === probeJob && e.payload.seq === seq));
        if (got.every(Boolean)) return { ms: Math.max(...got.map((e) => e.t)) - restartedAt, probes: posted.length, seq };
      }
    }
  })();
  probing.catch(() => {});
  await waitForState(clients, job, during.seq, 30_000, 'after the restart');
  const convergedMs = Date.now() - restartedAt;
  const fanout = await probing;
  await until(async () => (await Promise.all(c.gateways.map((g) => g.readyz()))).every((r) => r.status === 200 && r.body?.redis === 'ok'), {
    timeoutMs: 30_000,
    what: 'every instance to answer /readyz 200 again',
  });
  const readyMs = Date.now() - restartedAt;
  for (const x of clients) {
    assert.equal(x.latestSeq(job), during.seq, `${x.name} converged to the job's seq in the database`);
  }
  console.log(
    `[cluster] Redis restart: fan-out resumed ${fanout.ms} ms after the restart (probe ${fanout.probes} of a probe every 100 ms); ` +
      `every client converged to the true state after ${convergedMs} ms; /readyz 200 on all instances after ${readyMs} ms`,
  );

  // Later events fan out again from every instance.
  for (const g of [g2, g1, g0]) await g.postLog(job, `after from ${g.name}`);
  const final = await db.job(job);
  await waitForState(clients, job, final.seq, 10_000, 'after fan-out resumed');
  await sleep(300);
  for (const x of clients) {
    const tail = x.updates(job).filter((u) => u.seq > final.seq - 3).map((u) => u.seq);
    assert.deepEqual(tail, [final.seq - 2, final.seq - 1, final.seq], `${x.name}: the last three events as job-updates`);
    assert.equal(x.count('disconnect'), 0, `${x.name} was disconnected: ${summarize(x)}`);
    assert.ok(x.socket.connected, `${x.name} is still connected`);
    assert.equal(x.count('error'), 0, `${x.name} got an error: ${summarize(x)}`);
  }
  assertNoStreamProblems(clients, job);
  assertNoStreamProblems(clients, probeJob);
  const probeTruth = await db.job(probeJob);
  for (const x of clients) assert.equal(x.latestSeq(probeJob), probeTruth.seq, `${x.name}: the probe job's state`);
});

// ---------------------------------------------------------------------------
// 3 and 4. An instance dies (SIGKILL) or is stopped (SIGTERM)
// ---------------------------------------------------------------------------

/**
 * Six clients through nginx, three on each instance behind it, each
 * re-subscribing on every `connect` like the seed's React hook. nginx pins
 * a client by address, so clients connect from 127.0.k.1 for k = 1, 2, …
 * until each instance has three (the addresses nginx hashes to an instance
 * that is full are let go).
 */
async function lbClients(c, user, job, opts = {}) {
  const balanced = c.lb.backends;
  const placed = [];
  for (let k = 1; k <= 40 && placed.length < 6; k++) {
    const x = await new Client(c.lb.url, { user, name: `lb-127.0.${k}.1`, resubscribe: job, reconnection: true, cluster: c, localAddress: `127.0.${k}.1`, ...opts }).connected();
    await until(() => c.backendOf(x), { what: `the instance of ${x.name}` });
    const b = c.backendOf(x);
    assert.ok(balanced.includes(b), `${x.name} is on an instance behind nginx (${b.name})`);
    if (placed.filter(([, p]) => p === b).length < 3) placed.push([x, b]);
    else x.close();
  }
  for (const g of balanced) assert.equal(placed.filter(([, b]) => b === g).length, 3, `nginx put three clients on ${g.name}`);
  const clients = placed.map(([x]) => x);
  await until(() => clients.every((x) => x.count('job-status') === 1), { timeoutMs: 10_000, what: 'a job-status on every client' });
  return placed;
}

async function instanceGoesAway(t, signal) {
  const c = await cluster(t);
  const [g0, victim, g2] = c.gateways;
  const user = uniqueUser('alice');
  const job = await g0.createJob(user, 100);
  const placed = await lbClients(c, user, job, { reconnectOnServerDisconnect: false });
  const clients = placed.map(([x]) => x);
  const victims = placed.filter(([, b]) => b === victim).map(([x]) => x);
  const others = placed.filter(([, b]) => b !== victim).map(([x]) => x);

  await g0.postEvent(job, { type: 'status', status: 'processing', message: 'started' });
  await g2.postEvent(job, { type: 'progress', progress: 10, processedLeads: 10, totalLeads: 100 });
  await g0.postEvent(job, { type: 'progress', progress: 20, processedLeads: 20, totalLeads: 100 });
  await waitForState(clients, job, 3, 10_000, 'before the instance goes away');

  const exit = await victim.kill(signal);
  t.diagnostic(`${victim.name} exited ${exit.ms} ms after ${signal}: code ${exit.code}, signal ${exit.signal}`);
  // Work goes on while the victims reconnect.
  await g2.postEvent(job, { type: 'progress', progress: 30, processedLeads: 30, totalLeads: 100 });
  await g0.postLog(job, `after ${signal}`);

  await until(() => victims.every((x) => x.count('connect') === 2 && x.socket.connected), {
    timeoutMs: 20_000,
    what: `the clients of ${victim.name} to reconnect (${victims.map(summarize).join(' / ')})`,
  });
  const mid = await db.job(job);
  await waitForState(clients, job, mid.seq, 10_000, 'after the reconnect');
  for (const x of victims) {
    const lastConnect = x.events.findLastIndex((e) => e.type === 'connect');
    const status = x.events.slice(lastConnect).find((e) => e.type === 'job-status')?.payload;
    assert.ok(status, `${x.name}: a job-status after reconnecting: ${summarize(x)}`);
    assert.equal(status.jobId, job);
    assert.ok(status.seq >= 3 && status.seq <= mid.seq, `${x.name}: job-status seq ${status.seq} is the job's current state`);
    assert.equal(status.status, 'processing');
    assert.ok(status.progress >= 20, `${x.name}: job-status progress ${status.progress} reflects the events before the ${signal}`);
    const b = c.backendOf(x);
    assert.ok(b && b !== victim, `${x.name} came back on another instance (${b?.name})`);
  }
  for (const x of others) assert.equal(x.count('disconnect'), 0, `${x.name} (on a surviving instance) was disconnected`);

  // Updates posted afterwards reach everyone, on both surviving instances.
  await g2.postEvent(job, { type: 'progress', progress: 40, processedLeads: 40, totalLeads: 100 });
  await g0.postEvent(job, {
    type: 'complete',
    status: 'completed',
    results: { processed_leads: 100, enriched_leads: 90, high_score_leads: 12 },
  });
  const final = await db.job(job);
  await waitForState(clients, job, final.seq, 10_000, 'after the failover');
  await sleep(300);
  for (const x of clients) {
    const tail = x.updates(job).filter((u) => u.seq > final.seq - 2);
    assert.deepEqual(tail.map((u) => u.seq), [final.seq - 1, final.seq], `${x.name}: the events posted after the failover`);
    assert.equal(tail.at(-1).type, 'complete');
  }
  assertNoStreamProblems(clients, job);
  return { exit, victims, others };
}

test('3: SIGKILL of an instance: its clients reconnect through the load balancer to another instance and resume', { timeout: 180_000 }, async (t) => {
  const { exit, victims } = await instanceGoesAway(t, 'SIGKILL');
  assert.equal(exit.signal, 'SIGKILL');
  for (const x of victims) {
    const reason = x.of('disconnect')[0]?.payload;
    assert.ok(['transport close', 'transport error'].includes(reason), `${x.name}: disconnect reason ${reason}`);
  }
});

test('4: SIGTERM drains: the instance exits 0 within 12 s and its clients come back on another instance with the current state', { timeout: 180_000 }, async (t) => {
  const { exit, victims } = await instanceGoesAway(t, 'SIGTERM');
  assert.equal(exit.signal, null, 'exited by itself, not by the signal');
  assert.equal(exit.code, 0, 'exit code after SIGTERM');
  assert.ok(exit.ms < 12_000, `exited ${exit.ms} ms after SIGTERM (limit 12 s)`);
  console.log(`[cluster] SIGTERM: exit code ${exit.code} after ${exit.ms} ms; its clients saw ${JSON.stringify(victims.map((x) => x.of('disconnect')[0]?.payload))}`);
  for (const x of victims) assert.equal(x.count('disconnect'), 1, `${x.name} observed one disconnect`);
});

test("4b: SIGTERM: stock clients see 'transport close' and reconnect by themselves", { timeout: 120_000 }, async (t) => {
  const c = await cluster(t);
  const victim = c.gateways[1];
  const user = uniqueUser('alice');
  const job = await c.gateways[0].createJob(user, 10);
  // No reconnect handling of our own: socket.io-client's defaults only.
  const placed = await lbClients(c, user, job, { reconnectOnServerDisconnect: false });
  const victims = placed.filter(([, b]) => b === victim).map(([x]) => x);
  assert.ok(victims.length > 0, 'some clients were placed on the terminated instance');
  const exit = await victim.kill('SIGTERM');
  assert.equal(exit.code, 0);
  await until(() => victims.every((x) => x.count('disconnect') >= 1), { timeoutMs: 15_000, what: 'the disconnects' });
  for (const x of victims) {
    assert.equal(x.of('disconnect')[0].payload, 'transport close', `${x.name}: disconnect reason after SIGTERM`);
  }
  await until(() => victims.every((x) => x.count('connect') >= 2), { timeoutMs: 15_000, what: 'the reconnects' });
  for (const x of victims) {
    const b = c.backendOf(x);
    assert.ok(b && b !== victim, `${x.name} came back on another instance (${b?.name})`);
  }
});

// ---------------------------------------------------------------------------
// 6. nginx as deploy/nginx.conf ships it
// ---------------------------------------------------------------------------

test('6: through nginx as shipped: stock clients on default transports (long-polling, then the upgrade), long-polling only, /leads and /ws/leads/, and the worker API', { timeout: 120_000 }, async (t) => {
  const c = await cluster(t, { size: 2 });
  const lb = { url: c.lb.url };
  const user = uniqueUser('nginx');
  const created = await request(lb, 'POST', '/api/v1/jobs', { apiKey: API_KEY, body: { user_id: user, total_leads: 10 } });
  assert.equal(created.status, 201, `POST /api/v1/jobs through nginx: ${created.text}`);
  const job = created.body.jobId;

  // Stock clients with socket.io-client's default transports, from
  // addresses nginx pins to one instance or the other, until each instance
  // has two.
  const clients = [];
  const addressOf = new Map(); // gateway -> an address nginx sends to it
  for (let k = 1; k <= 40 && c.gateways.some((g) => clients.filter((x) => x.backend === g).length < 2); k++) {
    const x = await new Client(lb.url, { user, name: `default-127.0.${k}.1`, transports: null, localAddress: `127.0.${k}.1`, cluster: c }).connected();
    await until(() => c.backendOf(x), { what: `the instance of ${x.name}` });
    x.backend = c.backendOf(x);
    addressOf.set(x.backend, `127.0.${k}.1`);
    if (clients.filter((y) => y.backend === x.backend).length < 2) clients.push(x);
    else x.close();
  }
  for (const g of c.gateways) assert.equal(clients.filter((x) => x.backend === g).length, 2, `nginx put two clients on ${g.name}`);
  // Each starts on long-polling and upgrades to WebSocket through nginx.
  await until(() => clients.every((x) => x.transport === 'websocket'), { what: `the upgrade to WebSocket (${clients.map((x) => `${x.name}: ${x.transport}`).join(', ')})` });
  // Long-polling only: every request of a session must reach the instance
  // that holds it, or the session ends ("Session ID unknown").
  for (const g of c.gateways) {
    const x = await new Client(lb.url, { user, name: `polling-${g.name}`, transports: ['polling'], localAddress: addressOf.get(g), cluster: c }).connected();
    await until(() => c.backendOf(x), { what: `the instance of ${x.name}` });
    x.backend = c.backendOf(x);
    assert.equal(x.backend, g, `${x.name} went where its address is pinned`);
    clients.push(x);
  }
  for (const x of clients) await x.subscribe(job);

  // Leads views through nginx: Socket.IO /leads (upgraded) and /ws/leads/.
  const leadsViews = [
    await connectLeads(lb, 'sio-upgrade', { token: token(user) }, t),
    await connectLeads(lb, 'ws', { token: token(user) }, t),
  ];

  // Worker events through nginx reach every client on both instances, in
  // order, over a few seconds of long-polling.
  for (let n = 1; n <= 10; n++) {
    const r = await request(lb, 'POST', `/api/v1/jobs/${job}/events`, { apiKey: API_KEY, body: { type: 'progress', progress: n * 10, processedLeads: n, totalLeads: 10 } });
    assert.equal(r.status, 202, `event ${n} through nginx: ${r.text}`);
    await sleep(200);
  }
  await waitForState(clients, job, 10, 10_000, 'the events posted through nginx');
  assertNoStreamProblems(clients, job);
  for (const x of clients) {
    assert.equal(x.count('disconnect'), 0, `${x.name} stayed connected (${summarize(x)})`);
    assert.equal(x.count('connect'), 1, `${x.name} connected once`);
  }
  assert.ok(clients.filter((x) => x.name.startsWith('polling-')).every((x) => x.transport === 'polling'));

  const r = await request(lb, 'POST', '/api/v1/leads/events', { apiKey: API_KEY, body: { type: 'leads_updated' } });
  assert.equal(r.status, 202, `leads announcement through nginx: ${r.text}`);
  for (const v of leadsViews) await v.waitFor('leads_updated');
});

// ---------------------------------------------------------------------------
// 5. The Python and Rust example workers, as the README runs them
// ---------------------------------------------------------------------------

const EXAMPLE_WORKERS = {
  python: {
    command: [process.env.LEADGATE_TEST_PYTHON || 'python3', [path.join(REPO_ROOT, 'examples', 'python-worker', 'worker.py')]],
    delay: '0.01',
    hint: 'pip install -r examples/python-worker/requirements.txt (tests/run.sh sets LEADGATE_TEST_PYTHON)',
  },
  rust: {
    command: [path.join(REPO_ROOT, 'target', 'debug', 'rust-worker'), []],
    delay: '10',
    hint: 'cargo build -p rust-worker',
  },
};

for (const [language, worker] of Object.entries(EXAMPLE_WORKERS)) {
  test(`5: the ${language} example worker reaches clients on every instance`, { timeout: 120_000 }, async (t) => {
    const c = await cluster(t, { size: 2 });
    const user = uniqueUser(language);
    const job = await c.gateways[0].createJob(user, 6);
    const clients = await connectAll(c.gateways.map((g) => ({ url: g.url, user, name: `${g.name}-${language}`, cluster: c })));
    for (const x of clients) await x.subscribe(job);
    let run;
    try {
      run = await runWorker(c, ['--job', job, '--leads', '6', '--delay', worker.delay], worker.command);
    } catch (e) {
      throw new Error(`could not run the ${language} example worker (${worker.hint}): ${e.message}`);
    }
    const exit = await run.done;
    assert.equal(exit.code, 0, `${language} worker failed: ${exit.err}`);
    const truth = await db.job(job);
    assert.equal(truth.status, 'completed');
    assert.equal(truth.seq, 14, 'status + 6 × (log + progress) + complete');
    await waitForState(clients, job, truth.seq, 10_000, `${language} worker`);
    for (const x of clients) {
      const seqs = x.updates(job).map((u) => u.seq);
      assert.deepEqual(seqs, Array.from({ length: 14 }, (_, i) => i + 1), `${x.name}: every update once, in order`);
      const last = x.updates(job).at(-1);
      assert.equal(last.type, 'complete');
      assert.equal(last.results.processed_leads, 6);
    }
  });
}
