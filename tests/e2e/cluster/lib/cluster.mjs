// Several leadgate processes on one PostgreSQL database and one Redis, nginx
// in front of them with the configuration that ships (deploy/nginx.conf), and
// a private redis-server that can be killed and started again — the pieces of
// the cluster end-to-end tests.
//
// Nothing here needs a package beyond node: and socket.io-client (resolved
// from tests/e2e/node_modules): Redis is spoken to in raw RESP over node:net,
// PostgreSQL through the `psql` binary.

import { spawn, execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { io } from 'socket.io-client';

const execFileP = promisify(execFile);

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, '..', '..', '..', '..');
export const BIN = process.env.LEADGATE_BIN || path.join(REPO_ROOT, 'target', 'debug', 'leadgate');

/** HS256 secret and worker API key every cluster gateway is started with. */
export const JWT_SECRET = 'cluster-e2e-secret-5b1d9e3a7c2f4086';
export const API_KEY = 'cluster-e2e-worker-key-0123456789';

export const PG_BASE = process.env.LEADGATE_TEST_POSTGRES_URL || 'postgres://postgres@127.0.0.1:5432';
export const SHARED_REDIS_URL = process.env.LEADGATE_TEST_REDIS_URL || 'redis://127.0.0.1:6379';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

// ---------------------------------------------------------------------------
// Process bookkeeping: whatever happens, no child outlives the test process.
// ---------------------------------------------------------------------------

const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Resolves once `fn()` returns a truthy value; polls every `everyMs`. */
export async function until(fn, { timeoutMs = 10_000, everyMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? `: ${last.message}` : last !== undefined ? ` (last: ${JSON.stringify(last)})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await sleep(everyMs);
  }
}

/** A TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

export async function psql(sql, db = 'postgres') {
  const url = `${PG_BASE}/${db}`;
  const { stdout } = await execFileP('psql', [url, '-v', 'ON_ERROR_STOP=1', '-Atc', sql], {
    env: { ...process.env, PGCONNECT_TIMEOUT: '5' },
    timeout: 30_000,
  });
  return stdout.trim();
}

/** A fresh database; `drop()` removes it (even with open connections). */
export async function createDatabase() {
  try {
    await psql('SELECT 1');
  } catch (err) {
    throw new Error(
      `PostgreSQL is not reachable at ${PG_BASE} (psql said: ${(err.stderr || err.message || '').trim()}). ` +
        'Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start',
    );
  }
  const name = `leadgate_cluster_${crypto.randomBytes(6).toString('hex')}`;
  await psql(`CREATE DATABASE ${name}`);
  return {
    name,
    url: `${PG_BASE}/${name}`,
    query: (sql) => psql(sql, name),
    /** `{ seq, status }` of a job, straight from the jobs table. */
    async job(jobId) {
      const row = await psql(`SELECT seq, status FROM jobs WHERE id = '${jobId}'`, name);
      if (!row) throw new Error(`job ${jobId} is not in the database`);
      const [seq, status] = row.split('|');
      return { seq: Number(seq), status };
    },
    drop: () => psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`),
  };
}

// ---------------------------------------------------------------------------
// Redis: raw RESP, and a private server
// ---------------------------------------------------------------------------

function encodeCommand(args) {
  let s = `*${args.length}\r\n`;
  for (const a of args) {
    const b = Buffer.from(String(a));
    s += `$${b.length}\r\n${b}\r\n`;
  }
  return s;
}

/**
 * Sends one command to Redis at 127.0.0.1:`port` and resolves with the first
 * reply line (e.g. `+PONG`, `:3`). Rejects on a connection error or timeout.
 */
export function redisCommand(port, args, timeoutMs = 2_000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`redis ${args[0]} on port ${port} timed out`));
    }, timeoutMs);
    sock.once('connect', () => sock.write(encodeCommand(args)));
    sock.on('data', (d) => {
      buf += d.toString();
      const i = buf.indexOf('\r\n');
      if (i >= 0) {
        clearTimeout(timer);
        sock.destroy();
        const line = buf.slice(0, i);
        if (line.startsWith('-')) reject(new Error(`redis ${args[0]}: ${line}`));
        else resolve(line);
      }
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export function redisPortOf(url) {
  return Number(new URL(url).port || 6379);
}

/** Fails with a hint unless the shared Redis answers. */
export async function checkSharedRedis() {
  try {
    await redisCommand(redisPortOf(SHARED_REDIS_URL), ['PING']);
  } catch (err) {
    throw new Error(
      `Redis is not reachable at ${SHARED_REDIS_URL} (${err.message}). Start it with: ` +
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
    );
  }
}

/** A unique channel prefix, so that tests on the shared Redis never meet. */
export function uniquePrefix(tag = 'c') {
  return `lgcluster-${tag}-${crypto.randomBytes(5).toString('hex')}:`;
}

/**
 * A private `redis-server` on a free port that can be killed (as a crash
 * would) and started again on the same port.
 */
export class RedisServer {
  constructor(port) {
    this.port = port;
    this.child = null;
    this.exit = null;
  }

  static async start() {
    const server = new RedisServer(await freePort());
    await server.resume();
    return server;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running() {
    return this.child !== null;
  }

  /** Starts the server (again) on its port; resolves once it answers PING. */
  async resume() {
    if (this.child) throw new Error('redis-server is already running');
    const child = track(
      spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(this.port), '--save', '', '--appendonly', 'no'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    this.child = child;
    this.exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const spawnError = new Promise((_, reject) =>
      child.once('error', (err) => reject(new Error(`cannot run redis-server (${err.message}); install Redis`))),
    );
    spawnError.catch(() => {});
    await Promise.race([
      spawnError,
      until(async () => (await redisCommand(this.port, ['PING'], 500)) === '+PONG', {
        timeoutMs: 10_000,
        everyMs: 20,
        what: `redis-server on port ${this.port} (output: ${out})`,
      }),
    ]);
  }

  /** SIGKILL, as a crash would; resolves once the process is gone. */
  async kill() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    child.kill('SIGKILL');
    await this.exit;
  }
}

// ---------------------------------------------------------------------------
// Gateway processes
// ---------------------------------------------------------------------------

const LISTEN_RE = /Listening on http:\/\/127\.0\.0\.1:(\d+)/;

/**
 * One `leadgate serve` process. `start()` resolves once it printed its
 * Listening line *and* `/readyz` answered 200 (migrations applied, Redis
 * subscribed), so that the next instance can be started after it.
 */
export class Gateway {
  constructor({ name, databaseUrl, redisUrl, prefix, env = {} }) {
    this.name = name;
    this.databaseUrl = databaseUrl;
    this.redisUrl = redisUrl;
    this.prefix = prefix;
    this.env = env;
    this.out = '';
    this.exitInfo = null;
    this.child = null;
    this.port = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get exited() {
    return this.exitInfo !== null;
  }

  output() {
    return this.out.replace(ANSI, '');
  }

  /** The last `n` characters of the output, for failure messages. */
  tail(n = 4000) {
    const o = this.output();
    return o.length > n ? `…${o.slice(-n)}` : o;
  }

  async start({ timeoutMs = 60_000 } = {}) {
    if (!fs.existsSync(BIN)) {
      // The binary is rebuilt from time to time: give it a moment.
      await until(() => fs.existsSync(BIN), { timeoutMs: 120_000, everyMs: 500, what: `the leadgate binary at ${BIN}` });
    }
    const env = {
      ...process.env,
      LEADGATE_LISTEN: '127.0.0.1:0',
      LEADGATE_DATABASE_URL: this.databaseUrl,
      LEADGATE_REDIS_URL: this.redisUrl,
      LEADGATE_REDIS_PREFIX: this.prefix,
      LEADGATE_JWT_SECRET: JWT_SECRET,
      LEADGATE_API_KEYS: API_KEY,
      LEADGATE_LOG_FORMAT: 'text',
      // These suites open many connections and send many requests from one
      // address at once; the rate limits have tests of their own
      // (tests/integration/hostile.rs).
      LEADGATE_CONNECT_RATE: '100000',
      LEADGATE_EVENT_RATE: '100000',
      RUST_LOG: process.env.LEADGATE_E2E_RUST_LOG || 'info',
    };
    delete env.LEADGATE_JWT_PUBLIC_KEY;
    for (const [k, v] of Object.entries(this.env)) {
      if (v === undefined || v === null) delete env[k];
      else env[k] = String(v);
    }
    const child = track(spawn(BIN, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] }));
    this.child = child;
    this.exitPromise = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal, at: Date.now() };
        resolve(this.exitInfo);
      }),
    );
    let lineBuf = '';
    const listening = new Promise((resolve, reject) => {
      child.stdout.on('data', (chunk) => {
        const s = chunk.toString();
        this.out += s;
        lineBuf += s.replace(ANSI, '');
        const m = LISTEN_RE.exec(lineBuf);
        if (m) resolve(Number(m[1]));
        if (lineBuf.length > 100_000) lineBuf = lineBuf.slice(-1000);
      });
      child.stderr.on('data', (chunk) => (this.out += chunk.toString()));
      child.once('error', (err) => reject(new Error(`could not spawn ${BIN}: ${err.message}`)));
      this.exitPromise.then(({ code, signal }) =>
        reject(new Error(`leadgate ${this.name} exited before it was ready (code ${code}, signal ${signal})`)),
      );
    });
    try {
      this.port = await withTimeout(listening, timeoutMs, `leadgate ${this.name} printing "Listening on http://127.0.0.1:<port>"`);
      // The Listening line comes before migrations and the Redis
      // subscription; /readyz answers 200 only after both.
      await Promise.race([
        until(async () => (await this.readyz()).status === 200, { timeoutMs, everyMs: 100, what: `GET /readyz 200 from ${this.name}` }),
        this.exitPromise.then(({ code, signal }) => {
          throw new Error(`leadgate ${this.name} exited before it was ready (code ${code}, signal ${signal})`);
        }),
      ]);
    } catch (err) {
      await this.kill('SIGKILL');
      err.message += `\n--- leadgate ${this.name} output ---\n${this.tail()}\n--- end of output ---`;
      throw err;
    }
    return this;
  }

  /** GET /readyz → { status, body } (status 0 when the request fails). */
  async readyz() {
    try {
      const res = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(5_000) });
      return { status: res.status, body: await res.json().catch(() => null) };
    } catch (err) {
      return { status: 0, body: null, error: err.message };
    }
  }

  /**
   * Sends `signal`; resolves with `{ code, signal, ms }` once the process
   * exited, `ms` counted from the signal.
   */
  async kill(signal = 'SIGTERM') {
    if (!this.child || this.exited) return this.exitInfo && { ...this.exitInfo, ms: 0 };
    const sent = Date.now();
    this.child.kill(signal);
    const info = await this.exitPromise;
    return { ...info, ms: info.at - sent };
  }

  /** SIGTERM, then SIGKILL after `graceMs`. Never throws. */
  async stop(graceMs = 15_000) {
    if (!this.child || this.exited) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => {
      if (!this.exited) this.child.kill('SIGKILL');
    }, graceMs);
    await this.exitPromise;
    clearTimeout(timer);
    if (process.env.LEADGATE_E2E_LOG_DIR) {
      fs.mkdirSync(process.env.LEADGATE_E2E_LOG_DIR, { recursive: true });
      fs.writeFileSync(path.join(process.env.LEADGATE_E2E_LOG_DIR, `leadgate-cluster-${this.name}-${this.port}.log`), this.output());
    }
  }

  // -- worker HTTP API ------------------------------------------------------

  async api(method, urlPath, body) {
    const res = await fetch(this.url + urlPath, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      // Generous: with Redis down, a publish may wait for its timeouts.
      signal: AbortSignal.timeout(30_000),
    });
    const text = await res.text();
    let parsed = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      /* keep the text */
    }
    return { status: res.status, body: parsed };
  }

  async createJob(userId, totalLeads = 20) {
    const r = await this.api('POST', '/api/v1/jobs', { user_id: userId, total_leads: totalLeads });
    if (r.status !== 201 || typeof r.body?.jobId !== 'string') {
      throw new Error(`${this.name}: POST /api/v1/jobs expected 201 { jobId }, got ${r.status} ${JSON.stringify(r.body)}`);
    }
    return r.body.jobId;
  }

  /** Posts one event; fails unless 202. Resolves with `{ jobId, seq }`. */
  async postEvent(jobId, event) {
    const r = await this.api('POST', `/api/v1/jobs/${jobId}/events`, event);
    if (r.status !== 202) {
      throw new Error(`${this.name}: POST /api/v1/jobs/${jobId}/events ${JSON.stringify(event)} expected 202, got ${r.status} ${JSON.stringify(r.body)}`);
    }
    return r.body;
  }

  postLog(jobId, message) {
    return this.postEvent(jobId, { type: 'log', log: { level: 'info', message } });
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------
// Load balancer: nginx with the configuration that ships
// ---------------------------------------------------------------------------

export const NGINX_CONF = path.join(REPO_ROOT, 'deploy', 'nginx.conf');

function nginxBinary() {
  if (process.env.LEADGATE_TEST_NGINX) return process.env.LEADGATE_TEST_NGINX;
  for (const dir of [...(process.env.PATH || '').split(':'), '/usr/sbin']) {
    const candidate = path.join(dir, 'nginx');
    if (dir && fs.existsSync(candidate)) return candidate;
  }
  throw new Error('nginx is missing: apt-get install nginx (tests/run.sh installs it), or set LEADGATE_TEST_NGINX');
}

/**
 * `deploy/nginx.conf` as shipped, with only its addresses and ports
 * replaced: the two compose services `leadgate-1:3000` and `leadgate-2:3000`
 * by the two gateways, `listen 80` by 127.0.0.1 and `port`. Fails if the
 * file no longer has exactly those, so the tests cannot drift from it.
 */
export function nginxConfig(backends, port) {
  if (backends.length !== 2) throw new Error(`deploy/nginx.conf balances two instances, not ${backends.length}`);
  let conf = fs.readFileSync(NGINX_CONF, 'utf8');
  const replace = (from, to) => {
    const count = conf.split(from).length - 1;
    if (count !== 1) throw new Error(`deploy/nginx.conf: expected "${from}" once, found it ${count} times`);
    conf = conf.replace(from, to);
  };
  replace('server leadgate-1:3000 ', `server 127.0.0.1:${backends[0].port} `);
  replace('server leadgate-2:3000 ', `server 127.0.0.1:${backends[1].port} `);
  replace('listen 80;', `listen 127.0.0.1:${port};`);
  return conf;
}

/**
 * Debian's nginx in front of two gateways, run in the foreground from a
 * scratch directory (pid file and error log there; its command line sets
 * nothing but those). Sticky by client address (`ip_hash` on the first
 * three bytes of an IPv4 address): clients that should land on different
 * instances connect from different 127.x.y.1 addresses (see `Client`).
 */
export class Nginx {
  constructor(backends) {
    this.backends = backends;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leadgate-nginx-'));
    this.child = null;
    this.out = '';
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start({ timeoutMs = 10_000 } = {}) {
    this.port = await freePort();
    const conf = path.join(this.dir, 'nginx.conf');
    fs.writeFileSync(conf, nginxConfig(this.backends, this.port));
    const errorLog = path.join(this.dir, 'error.log');
    const global = `daemon off; master_process on; pid ${path.join(this.dir, 'nginx.pid')}; error_log ${errorLog} info;`;
    const child = track(spawn(nginxBinary(), ['-p', this.dir, '-e', errorLog, '-c', conf, '-g', global], { stdio: ['ignore', 'pipe', 'pipe'] }));
    this.child = child;
    child.stdout.on('data', (c) => (this.out += c));
    child.stderr.on('data', (c) => (this.out += c));
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    let gone = null;
    this.exited.then((e) => (gone = e));
    child.once('error', (err) => (gone = { error: err.message }));
    try {
      await until(
        async () => {
          if (gone) throw new Error(`nginx exited: ${JSON.stringify(gone)}\n${this.log()}`);
          return new Promise((resolve) => {
            const probe = net.connect(this.port, '127.0.0.1');
            probe.once('connect', () => (probe.destroy(), resolve(true)));
            probe.once('error', () => resolve(false));
          });
        },
        { timeoutMs, what: `nginx listening on 127.0.0.1:${this.port}` },
      );
    } catch (err) {
      await this.stop();
      throw err;
    }
    return this;
  }

  /** nginx's own output and error log (warnings about upstreams, etc.). */
  log() {
    let errors = '';
    try {
      errors = fs.readFileSync(path.join(this.dir, 'error.log'), 'utf8');
    } catch {
      /* not written yet */
    }
    return `${this.out}${errors}`;
  }

  /** Ends nginx (SIGQUIT, then SIGKILL after 3 s) and removes its directory. */
  async stop() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGQUIT');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 3_000);
      await this.exited;
      clearTimeout(timer);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// A cluster
// ---------------------------------------------------------------------------

/**
 * Starts `size` gateways, one after the other, on `database` (from
 * createDatabase) and `redisUrl` under `prefix`, and nginx in front of the
 * first two (`cluster.lb`), as `deploy/nginx.conf` has it. The gateways
 * trust nginx's `X-Forwarded-For`, as a deployment behind it does. `stop()`
 * ends everything it started (not the database or Redis, which the caller
 * owns).
 */
export async function startCluster({ database, redisUrl = SHARED_REDIS_URL, prefix = uniquePrefix(), size = 3, env = {} }) {
  const gateways = [];
  const cluster = {
    database,
    redisUrl,
    prefix,
    gateways,
    lb: null,
    sockets: new Set(),
    /** The gateway that holds the client's current connection (by its socket id in the gateways' logs). */
    backendOf(client) {
      const id = client.socket.id;
      if (!id) return undefined;
      return gateways.find((g) => g.output().split('\n').some((line) => line.includes('Connected.') && line.includes(`sid=${id}`)));
    },
    async stop() {
      for (const s of cluster.sockets) s.close();
      cluster.sockets.clear();
      await cluster.lb?.stop();
      await Promise.all(gateways.map((g) => g.stop()));
    },
  };
  try {
    for (let i = 0; i < size; i++) {
      const gw = new Gateway({ name: `gw${i}`, databaseUrl: database.url, redisUrl, prefix, env: { LEADGATE_TRUSTED_PROXIES: '127.0.0.1', ...env } });
      gateways.push(gw);
      await gw.start();
    }
    if (size >= 2) cluster.lb = await new Nginx(gateways.slice(0, 2)).start();
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

// ---------------------------------------------------------------------------
// Tokens (HS256 with node:crypto)
// ---------------------------------------------------------------------------

export function token(sub, { ttl = 3600 } = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + ttl })}`;
  return `${input}.${crypto.createHmac('sha256', JWT_SECRET).update(input).digest('base64url')}`;
}

export function uniqueUser(prefix = 'user') {
  return `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
}

// ---------------------------------------------------------------------------
// Browser-like clients that record everything they see
// ---------------------------------------------------------------------------

/**
 * A socket.io-client socket (WebSocket transport) that records every
 * connect, disconnect, job-status, job-update and error with a timestamp.
 *
 * `resubscribe: jobId` emits `subscribe-job` on every `connect`, as the seed's
 * React hook does. `reconnectOnServerDisconnect` calls `socket.connect()`
 * after a disconnect with reason "io server disconnect" — the one reason
 * after which socket.io-client does not reconnect by itself.
 */
export class Client {
  constructor(url, { user, name = user, resubscribe, reconnection = false, reconnectOnServerDisconnect = false, cluster, transports = ['websocket'], localAddress } = {}) {
    this.name = name;
    this.user = user;
    this.events = [];
    // `localAddress`: the address to connect from (127.x.y.1), for nginx's
    // ip_hash; an agent carries it to long-polling requests and WebSockets.
    const from = localAddress ? { agent: new http.Agent({ localAddress }), localAddress } : {};
    this.socket = io(url, {
      forceNew: true,
      ...(transports ? { transports } : {}),
      ...from,
      auth: { token: token(user) },
      timeout: 10_000,
      reconnection,
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      randomizationFactor: 0.2,
    });
    cluster?.sockets.add(this.socket);
    const rec = (type) => (payload) => this.events.push({ type, payload, t: Date.now(), port: this.localPort() });
    this.socket.on('connect', () => {
      this.events.push({ type: 'connect', t: Date.now(), port: this.localPort() });
      if (resubscribe) this.socket.emit('subscribe-job', resubscribe);
    });
    this.socket.on('disconnect', (reason) => {
      this.events.push({ type: 'disconnect', payload: reason, t: Date.now(), active: this.socket.active });
      if (reason === 'io server disconnect' && reconnectOnServerDisconnect) this.socket.connect();
    });
    this.socket.on('connect_error', rec('connect_error'));
    this.socket.on('job-status', rec('job-status'));
    this.socket.on('job-update', rec('job-update'));
    this.socket.on('error', rec('error'));
  }

  /** The local TCP port of the current WebSocket, if it is on one. */
  localPort() {
    try {
      return this.socket.io.engine.transport.ws._socket.localPort;
    } catch {
      return undefined;
    }
  }

  /** `polling` or `websocket`. */
  get transport() {
    return this.socket.io.engine?.transport?.name;
  }

  of(type) {
    return this.events.filter((e) => e.type === type);
  }

  count(type) {
    return this.of(type).length;
  }

  async connected(timeoutMs = 15_000) {
    await until(() => this.socket.connected || this.of('connect_error').length > 0, { timeoutMs, what: `${this.name} to connect` });
    if (!this.socket.connected) throw new Error(`${this.name} could not connect: ${this.of('connect_error')[0].payload?.message}`);
    return this;
  }

  /** subscribe-job with an ack; resolves with the job-status it got. */
  async subscribe(jobId, timeoutMs = 10_000) {
    const before = this.of('job-status').filter((e) => e.payload?.jobId === jobId).length;
    const ack = await this.socket.timeout(timeoutMs).emitWithAck('subscribe-job', jobId);
    if (!ack || ack.ok !== true) throw new Error(`${this.name}: subscribe-job ${jobId} refused: ${JSON.stringify(ack)}`);
    await until(() => this.of('job-status').filter((e) => e.payload?.jobId === jobId).length > before, {
      timeoutMs,
      what: `${this.name}: job-status of ${jobId}`,
    });
    return this.of('job-status').filter((e) => e.payload?.jobId === jobId).at(-1).payload;
  }

  /** job-updates (payloads), optionally of one job. */
  updates(jobId) {
    return this.of('job-update')
      .map((e) => e.payload)
      .filter((u) => jobId === undefined || u?.jobId === jobId);
  }

  /** The highest seq seen for `jobId`, in a job-status or a job-update (-1: none). */
  latestSeq(jobId) {
    let seq = -1;
    for (const e of this.events) {
      if ((e.type === 'job-status' || e.type === 'job-update') && e.payload?.jobId === jobId) seq = Math.max(seq, e.payload.seq);
    }
    return seq;
  }

  /**
   * Checks the contract on everything received for `jobId`: each job-update
   * has exactly the seq after the last one seen (job-status or job-update),
   * none twice. A job-status may only move the seq forward, except right
   * after a (re)connect+subscribe, where it is a fresh snapshot. Returns a
   * list of problems (empty: fine).
   */
  streamProblems(jobId) {
    const problems = [];
    let last = null; // seq of the last job-status / job-update since the last subscribe
    const seen = new Set();
    for (const e of this.events) {
      if (e.type === 'connect') {
        last = null;
        continue;
      }
      if (e.type !== 'job-status' && e.type !== 'job-update') continue;
      const p = e.payload;
      if (p?.jobId !== jobId) continue;
      if (!Number.isInteger(p.seq)) {
        problems.push(`${e.type} without an integer seq: ${JSON.stringify(p)}`);
        continue;
      }
      if (e.type === 'job-status') {
        if (last !== null && p.seq < last) problems.push(`job-status seq ${p.seq} went back from ${last}`);
        last = p.seq;
        continue;
      }
      if (last === null) problems.push(`job-update seq ${p.seq} before any job-status`);
      else if (p.seq !== last + 1) problems.push(`job-update seq ${p.seq} after seq ${last} (expected ${last + 1})`);
      if (seen.has(p.seq)) problems.push(`job-update seq ${p.seq} received twice`);
      seen.add(p.seq);
      last = p.seq;
    }
    return problems;
  }

  close() {
    this.socket.close();
  }
}
