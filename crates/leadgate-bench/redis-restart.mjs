// How long after a Redis restart events reach every instance again:
// leadgate and the Node.js peer side by side, three instances each on one
// Redis (a private redis-server) and one PostgreSQL database.
//
//   node crates/leadgate-bench/redis-restart.mjs [rounds]
//
// Each round: one client per instance follows a job; Redis is killed and
// started again a second later; from the moment it takes connections, an
// event is sent every 100 ms until one has reached the client of every
// instance. The figure is the time from the restart to that moment.
// leadgate is fed through one instance's HTTP API (each request awaited)
// and, as a worker with a bare Redis client does, by PUBLISH on the job's
// channel; the peer has only the latter.
//
// Needs `npm ci` in tests/e2e and crates/leadgate-bench/node-peer, the
// leadgate binary (LEADGATE_BIN, default target/debug/leadgate),
// PostgreSQL and redis-server as the cluster tests do.

import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  BIN,
  Client,
  Gateway,
  JWT_SECRET,
  RedisServer,
  createDatabase,
  freePort,
  redisCommand,
  redisPortOf,
  sleep,
  uniquePrefix,
  uniqueUser,
  until,
} from '../../tests/e2e/cluster/lib/cluster.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROUNDS = Number(process.argv[2] ?? 5);
const INSTANCES = 3;
/** Every event sent carries a number of its own. */
let sentSoFar = 0;

/** One Node.js peer process (node-peer/server.mjs). */
class Peer {
  constructor({ name, databaseUrl, redisUrl, prefix }) {
    Object.assign(this, { name, databaseUrl, redisUrl, prefix, out: '' });
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    this.port = await freePort();
    this.child = spawn(process.execPath, [path.join(HERE, 'node-peer', 'server.mjs')], {
      env: {
        ...process.env,
        PORT: String(this.port),
        DATABASE_URL: this.databaseUrl,
        REDIS_URL: this.redisUrl,
        REDIS_PREFIX: this.prefix,
        JWT_SECRET,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout.on('data', (d) => (this.out += d));
    this.child.stderr.on('data', (d) => (this.out += d));
    await until(() => this.out.includes('listening on'), { timeoutMs: 30_000, what: `${this.name} to listen (output: ${this.out})` });
    return this;
  }

  async stop() {
    this.child?.kill('SIGKILL');
  }
}

/**
 * One round on `servers`: returns the ms from the restart until an event
 * sent after it had reached every client, and how many were sent.
 */
async function round(redis, clients, jobId, send) {
  await redis.kill();
  await sleep(1_000);
  await redis.resume();
  const restartedAt = Date.now();
  const sent = [];
  let reached = null;
  const reachedAll = () => {
    for (const mark of sent) {
      const times = clients.map((c) => c.arrival(mark));
      if (times.every((t) => t !== undefined)) return Math.max(...times);
    }
    return null;
  };
  while (Date.now() - restartedAt < 20_000) {
    sent.push(await send((sentSoFar += 1)));
    await sleep(100);
    if ((reached = reachedAll()) !== null) break;
  }
  if (reached === null) throw new Error(`no event reached every instance within 20 s of the restart (sent ${sent.length})`);
  return { ms: reached - restartedAt, sent: sent.length };
}

/** Wraps the cluster tests' client: when did an event carrying `mark` arrive? */
function watch(client, jobId) {
  client.arrival = (mark) => {
    for (const e of client.events) {
      if (e.payload?.jobId !== jobId) continue;
      if (e.type === 'job-update' && e.payload.log?.message === mark.message) return e.t;
      // leadgate brings an instance that missed events up to date with a
      // fresh job-status: it has the event when its seq is there.
      if (e.type === 'job-status' && mark.seq !== undefined && e.payload.seq >= mark.seq) return e.t;
    }
    return undefined;
  };
  return client;
}

function stats(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted.at(-1) };
}

async function main() {
  const db = await createDatabase();
  const redis = await RedisServer.start();
  const started = [];
  const results = [];
  try {
    // leadgate's instances first: they apply the migrations the peer reads.
    const prefix = uniquePrefix('restart-bench');
    const gateways = [];
    for (let i = 0; i < INSTANCES; i++) {
      const g = new Gateway({ name: `leadgate-${i}`, databaseUrl: db.url, redisUrl: redis.url, prefix });
      started.push(g);
      await g.start();
      gateways.push(g);
    }
    const peerPrefix = uniquePrefix('restart-peer');
    const peers = [];
    for (let i = 0; i < INSTANCES; i++) {
      const p = new Peer({ name: `peer-${i}`, databaseUrl: db.url, redisUrl: redis.url, prefix: peerPrefix });
      started.push(p);
      peers.push(await p.start());
    }

    const user = uniqueUser('bench');
    const publish = (prefixOf, jobId) => async (n) => {
      const message = `worker ${n}`;
      const body = JSON.stringify({ type: 'log', log: { level: 'info', message } });
      // A worker's publish, on a connection of its own; while Redis is
      // still starting it may fail, and the worker goes on.
      await redisCommand(redisPortOf(redis.url), ['PUBLISH', `${prefixOf}job:${jobId}`, body], 500).catch(() => {});
      return { message };
    };
    const kinds = [
      {
        name: 'leadgate, HTTP API',
        servers: gateways,
        send: (jobId) => async (n) => {
          const message = `api ${n}`;
          const { seq } = await gateways[0].postLog(jobId, message);
          return { message, seq };
        },
      },
      { name: 'leadgate, worker PUBLISH', servers: gateways, send: (jobId) => publish(prefix, jobId) },
      { name: 'Node.js peer, worker PUBLISH', servers: peers, send: (jobId) => publish(peerPrefix, jobId) },
    ];
    for (const kind of kinds) {
      const jobId = await gateways[0].createJob(user, 100);
      const clients = [];
      for (const server of kind.servers) {
        const c = new Client(server.url, { user, name: server.name });
        await c.connected();
        await c.subscribe(jobId);
        clients.push(watch(c, jobId));
      }
      const figures = [];
      for (let r = 0; r < ROUNDS; r++) {
        figures.push((await round(redis, clients, jobId, kind.send(jobId))).ms);
        await sleep(500);
      }
      for (const c of clients) c.close();
      results.push({ kind: kind.name, figures, ...stats(figures) });
      console.error(`${kind.name}: ${figures.join(', ')} ms`);
    }
  } finally {
    for (const s of started) await s.stop().catch(() => {});
    await redis.kill();
    await db.drop();
  }

  console.log(`\nRedis restart → an event on every one of ${INSTANCES} instances (${ROUNDS} rounds each; ms)`);
  console.log('| server, fed by | median | min | max | rounds |');
  console.log('|---|---:|---:|---:|---|');
  for (const r of results) console.log(`| ${r.kind} | ${r.median} | ${r.min} | ${r.max} | ${r.figures.join(', ')} |`);
}

console.error(`leadgate: ${BIN}`);
await main();
