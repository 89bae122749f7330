// Test harness for the leadgate end-to-end suite.
//
// Everything here talks to a real `leadgate serve` process: the gateway is
// spawned with a fresh database (SQLite file or PostgreSQL database, chosen by
// LEADGATE_TEST_BACKEND), workers are simulated with plain HTTP requests, and
// browsers with the official socket.io-client v4.

import { spawn, execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { io } from 'socket.io-client';
import assert from 'node:assert/strict';

const execFileP = promisify(execFile);

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, '..', '..', '..');

export const BIN = process.env.LEADGATE_BIN || path.join(REPO_ROOT, 'target', 'debug', 'leadgate');
export const BACKEND = (process.env.LEADGATE_TEST_BACKEND || 'sqlite').toLowerCase();

/** HS256 secret every default gateway is started with. */
export const JWT_SECRET = 'e2e-test-secret-7f3a9c2d1b8e4f60a5d3c1e9b7f2a4d8';
/** Worker API keys every default gateway is started with. */
export const API_KEY = 'e2e-worker-key-0123456789abcdef';
export const API_KEY_2 = 'e2e-worker-key-second';

/**
 * How a socket.io-client reaches the gateway; every socket scenario runs
 * once per entry: a WebSocket from the start, long-polling only, and the
 * client's default (long-polling, then upgraded to a WebSocket).
 */
export const TRANSPORTS = ['websocket', 'polling', 'upgrade'];

const PG_HINT =
  'PostgreSQL is not reachable at 127.0.0.1:5432. Start it with:\n' +
  '  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n' +
  'or run the suite with LEADGATE_TEST_BACKEND=sqlite.';

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function uuid() {
  return crypto.randomUUID();
}

/** A user id that no other test uses. */
export function uniqueUser(prefix = 'user') {
  return `${prefix}-${crypto.randomBytes(5).toString('hex')}`;
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

async function psql(sql, db = 'postgres') {
  return execFileP('psql', ['-h', '127.0.0.1', '-U', 'postgres', '-d', db, '-v', 'ON_ERROR_STOP=1', '-Atc', sql], {
    env: { ...process.env, PGCONNECT_TIMEOUT: '5' },
    timeout: 30_000,
  });
}

async function createDatabase() {
  if (BACKEND === 'sqlite') {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leadgate-e2e-'));
    return {
      url: `sqlite://${dir}/leadgate.db?mode=rwc`,
      async drop() {
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  if (BACKEND === 'postgres' || BACKEND === 'postgresql') {
    try {
      await psql('SELECT 1');
    } catch (err) {
      throw new Error(`${PG_HINT}\n(psql said: ${(err.stderr || err.message || '').trim()})`);
    }
    const name = `leadgate_e2e_${crypto.randomBytes(6).toString('hex')}`;
    await psql(`CREATE DATABASE ${name}`);
    return {
      url: `postgres://postgres@127.0.0.1:5432/${name}`,
      name,
      async drop() {
        await psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      },
    };
  }
  throw new Error(`LEADGATE_TEST_BACKEND must be "sqlite" or "postgres", got "${BACKEND}"`);
}

// ---------------------------------------------------------------------------
// Gateway process
// ---------------------------------------------------------------------------

const LISTEN_RE = /Listening on http:\/\/127\.0\.0\.1:(\d+)/;

/**
 * Spawn `leadgate serve` on a random port with a fresh database.
 *
 * `env` overrides the defaults; a value of `undefined` or `null` removes the
 * variable (e.g. `{ LEADGATE_JWT_SECRET: undefined, LEADGATE_JWT_PUBLIC_KEY: pem }`).
 *
 * Resolves to `{ url, port, stop(), output() }`.
 */
export async function startGateway({ env = {}, timeoutMs = 30_000, args = ['serve'] } = {}) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`leadgate binary not found at ${BIN} (build it, or set LEADGATE_BIN)`);
  }
  const db = await createDatabase();

  const fullEnv = {
    ...process.env,
    LEADGATE_LISTEN: '127.0.0.1:0',
    LEADGATE_DATABASE_URL: db.url,
    LEADGATE_JWT_SECRET: JWT_SECRET,
    LEADGATE_API_KEYS: `${API_KEY},${API_KEY_2}`,
    LEADGATE_LOG_FORMAT: 'text',
    // These suites open many connections and send many requests from one
    // address at once; the rate limits have tests of their own
    // (tests/integration/hostile.rs).
    LEADGATE_CONNECT_RATE: '100000',
    LEADGATE_EVENT_RATE: '100000',
    RUST_LOG: process.env.LEADGATE_E2E_RUST_LOG || 'info',
  };
  // A test environment must never leak into the gateway: it runs standalone.
  delete fullEnv.LEADGATE_REDIS_URL;
  delete fullEnv.LEADGATE_JWT_PUBLIC_KEY;
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined || v === null) delete fullEnv[k];
    else fullEnv[k] = String(v);
  }

  const child = spawn(BIN, args, { env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let stdoutBuf = '';
  let exited = false;
  let exitInfo = null;
  const exitPromise = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      exited = true;
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  });
  const output = () => out.replace(ANSI, '');

  let port;
  try {
    port = await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`leadgate did not print "Listening on http://127.0.0.1:<port>" on stdout within ${timeoutMs} ms`)),
        timeoutMs,
      );
      child.stdout.on('data', (chunk) => {
        const s = chunk.toString();
        out += s;
        stdoutBuf += s.replace(ANSI, '');
        const lines = stdoutBuf.split('\n');
        stdoutBuf = lines.pop();
        for (const line of lines.concat(stdoutBuf)) {
          const m = LISTEN_RE.exec(line);
          if (m) {
            clearTimeout(timer);
            resolve(Number(m[1]));
            return;
          }
        }
      });
      child.stderr.on('data', (chunk) => {
        out += chunk.toString();
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`could not spawn ${BIN}: ${err.message}`));
      });
      exitPromise.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`leadgate exited before listening (code ${code}, signal ${signal})`));
      });
    });
  } catch (err) {
    if (!exited) {
      child.kill('SIGKILL');
      await exitPromise;
    }
    await db.drop().catch(() => {});
    err.message += `\n--- leadgate output ---\n${output()}\n--- end of output ---`;
    throw err;
  }

  const sockets = new Set();
  let stopped = null;
  const gw = {
    url: `http://127.0.0.1:${port}`,
    port,
    db,
    output,
    /** sockets opened with connect(gw, …), closed by stop() */
    sockets,
    get exited() {
      return exited;
    },
    stop() {
      if (stopped) return stopped;
      stopped = (async () => {
        const crashed = exited ? exitInfo : null;
        for (const s of sockets) s.close();
        sockets.clear();
        if (process.env.LEADGATE_E2E_LOG_DIR) {
          fs.mkdirSync(process.env.LEADGATE_E2E_LOG_DIR, { recursive: true });
          fs.writeFileSync(path.join(process.env.LEADGATE_E2E_LOG_DIR, `leadgate-${port}.log`), output());
        }
        if (!exited) {
          child.kill('SIGTERM');
          const killer = setTimeout(() => {
            if (!exited) child.kill('SIGKILL');
          }, 5_000);
          await exitPromise;
          clearTimeout(killer);
        }
        await db.drop();
        if (crashed) {
          throw new Error(
            `leadgate exited during the tests (code ${crashed.code}, signal ${crashed.signal})\n--- leadgate output ---\n${output()}\n--- end of output ---`,
          );
        }
        return exitInfo;
      })();
      return stopped;
    },
  };
  return gw;
}

// ---------------------------------------------------------------------------
// Tokens (no JWT library: node:crypto only)
// ---------------------------------------------------------------------------

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const b64json = (obj) => b64url(JSON.stringify(obj));

/**
 * Mint a JWT.
 *
 * - `sub` (default 'alice'), `roles` (array, omitted if undefined)
 * - `expiresIn` seconds from now (default 3600; negative = already expired;
 *   `null` = no `exp` claim)
 * - `notBefore` seconds from now for `nbf` (omitted if undefined)
 * - `alg`: 'HS256' (default), 'RS256', 'ES256' or 'none'
 * - `key`: HMAC secret for HS256 (default JWT_SECRET) or a private KeyObject /
 *   PEM for RS256 / ES256
 * - `claims`: extra/overriding payload claims; `header`: extra header fields
 */
export function token({
  sub = 'alice',
  roles,
  expiresIn = 3600,
  notBefore,
  alg = 'HS256',
  key,
  claims = {},
  header = {},
} = {}) {
  const now = Math.floor(Date.now() / 1000);
  const payload = { iat: now };
  if (sub !== undefined && sub !== null) payload.sub = sub;
  if (roles !== undefined) payload.roles = roles;
  if (expiresIn !== null && expiresIn !== undefined) payload.exp = now + expiresIn;
  if (notBefore !== undefined) payload.nbf = now + notBefore;
  Object.assign(payload, claims);
  const hdr = { alg, typ: 'JWT', ...header };
  const signingInput = `${b64json(hdr)}.${b64json(payload)}`;

  let sig;
  switch (alg) {
    case 'HS256':
      sig = crypto.createHmac('sha256', key ?? JWT_SECRET).update(signingInput).digest();
      break;
    case 'RS256':
      if (!key) throw new Error('RS256 needs a private key');
      sig = crypto.sign('sha256', Buffer.from(signingInput), key);
      break;
    case 'ES256':
      if (!key) throw new Error('ES256 needs a private key');
      sig = crypto.sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' });
      break;
    case 'none':
      return `${signingInput}.`;
    default:
      throw new Error(`unsupported alg ${alg}`);
  }
  return `${signingInput}.${b64url(sig)}`;
}

/** Tokens that a correctly configured HS256 gateway must refuse. */
export const badTokens = {
  expired: (sub = 'alice') => token({ sub, expiresIn: -3600 }),
  wrongSecret: (sub = 'alice') => token({ sub, key: 'not-the-gateway-secret' }),
  garbage: () => 'this-is-not-a-jwt',
  algNone: (sub = 'alice') => token({ sub, alg: 'none' }),
  /** valid signature, but the signature part is flipped */
  tampered: (sub = 'alice') => {
    const t = token({ sub });
    const [h, p] = t.split('.');
    const forgedPayload = b64json({ ...JSON.parse(Buffer.from(p, 'base64url')), sub: 'admin', roles: ['admin'] });
    return `${h}.${forgedPayload}.${t.split('.')[2]}`;
  },
};

/** Generate an RS256 or ES256 key pair; writes the SPKI public PEM to a temp file. */
export function keyPair(alg) {
  const kp =
    alg === 'RS256'
      ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
      : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const publicPem = kp.publicKey.export({ type: 'spki', format: 'pem' });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leadgate-e2e-key-'));
  const publicKeyPath = path.join(dir, `${alg.toLowerCase()}-public.pem`);
  fs.writeFileSync(publicKeyPath, publicPem);
  return {
    privateKey: kp.privateKey,
    publicKey: kp.publicKey,
    publicPem,
    publicKeyPath,
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

// ---------------------------------------------------------------------------
// Worker HTTP API
// ---------------------------------------------------------------------------

/**
 * Raw HTTP request against the gateway. `body` is JSON-encoded unless `rawBody`
 * is given. `apiKey: null` sends no Authorization header.
 */
export async function request(gw, method, urlPath, { body, rawBody, apiKey = API_KEY, headers = {} } = {}) {
  const h = { ...headers };
  if (apiKey !== null && apiKey !== undefined) h.authorization = `Bearer ${apiKey}`;
  let payload;
  if (rawBody !== undefined) {
    payload = rawBody;
    if (!Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) h['content-type'] = 'application/json';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    h['content-type'] = 'application/json';
  }
  const res = await fetch(gw.url + urlPath, { method, headers: h, body: payload, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = text.length ? JSON.parse(text) : null;
  } catch {
    /* keep the raw text */
  }
  return { status: res.status, body: parsed, headers: res.headers, text };
}

/** POST /api/v1/jobs → { status, body } */
export function createJob(gw, { user_id, total_leads } = {}, { apiKey = API_KEY, body } = {}) {
  const b = body ?? { user_id };
  if (body === undefined && total_leads !== undefined) b.total_leads = total_leads;
  return request(gw, 'POST', '/api/v1/jobs', { body: b, apiKey });
}

/** Create a job and return its id; fails loudly if the gateway does not answer 201. */
export async function newJob(gw, user_id, total_leads = 100) {
  const r = await createJob(gw, { user_id, total_leads });
  if (r.status !== 201 || !r.body || typeof r.body.jobId !== 'string') {
    throw new Error(`POST /api/v1/jobs expected 201 { jobId }, got ${r.status} ${JSON.stringify(r.body)}`);
  }
  return r.body.jobId;
}

/** POST /api/v1/jobs/<jobId>/events → { status, body } */
export function postEvent(gw, jobId, event, { apiKey = API_KEY, rawBody, headers } = {}) {
  return request(gw, 'POST', `/api/v1/jobs/${encodeURIComponent(jobId)}/events`, {
    body: rawBody === undefined ? event : undefined,
    rawBody,
    apiKey,
    headers,
  });
}

/** Post an event and fail loudly unless it is accepted; returns the 202 body. */
export async function mustPost(gw, jobId, event) {
  const r = await postEvent(gw, jobId, event);
  if (r.status !== 202) {
    throw new Error(`POST /api/v1/jobs/${jobId}/events ${JSON.stringify(event)} expected 202, got ${r.status} ${JSON.stringify(r.body)}`);
  }
  return r.body;
}

// ---------------------------------------------------------------------------
// Socket.IO clients
// ---------------------------------------------------------------------------

/** socket.io-client options for one of TRANSPORTS. */
export function transportOpts(transport) {
  switch (transport) {
    case 'websocket':
      return { transports: ['websocket'] };
    case 'polling':
      return { transports: ['polling'], upgrade: false };
    case 'upgrade':
      return {};
    default:
      throw new Error(`unknown transport ${transport}`);
  }
}

/**
 * Asserts that a connected socket uses the transport under test; for
 * 'upgrade', that it started on long-polling and is, or within a second
 * becomes, a WebSocket.
 */
export async function assertTransport(socket, transport) {
  const engine = socket.io.engine;
  if (transport !== 'upgrade') {
    assert.equal(engine.transport.name, transport, 'the socket uses the transport under test');
    return;
  }
  if (engine.transport.name !== 'websocket') {
    assert.equal(engine.transport.name, 'polling', 'a default client starts on long-polling');
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the client did not upgrade to a WebSocket within 1 s')), 1000);
      engine.once('upgrade', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  assert.equal(engine.transport.name, 'websocket', 'the client upgraded to a WebSocket');
}

/**
 * Build (but do not wait for) a socket. `token` goes to `auth.token` unless
 * `auth` is given explicitly. The socket is registered with the gateway so
 * gw.stop() closes it.
 */
export function socketFor(gw, { token: tok, transport, transports, auth, namespace = '/', ...rest } = {}) {
  const opts = {
    forceNew: true,
    reconnection: false,
    timeout: 10_000,
    ...(transport ? transportOpts(transport) : {}),
    ...(transports ? { transports } : {}),
    ...rest,
  };
  if (auth !== undefined) opts.auth = auth;
  else if (tok !== undefined) opts.auth = { token: tok };
  const socket = io(gw.url + (namespace === '/' ? '' : namespace), opts);
  gw.sockets?.add(socket);
  return socket;
}

/**
 * Connect and resolve with the connected socket; reject with the
 * `connect_error` (err.message is the server's reason).
 */
export function connect(gw, opts = {}) {
  const { connectTimeoutMs = 15_000 } = opts;
  const socket = socketFor(gw, opts);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      socket.close();
      reject(new Error(`socket did not connect within ${connectTimeoutMs} ms`));
    }, connectTimeoutMs);
    const onConnect = () => {
      cleanup();
      resolve(socket);
    };
    const onError = (err) => {
      cleanup();
      socket.close();
      gw.sockets?.delete(socket);
      reject(err);
    };
    function cleanup() {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    }
    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
}

/** Expect the connection to be refused; resolve with the connect_error. */
export async function connectError(gw, opts = {}) {
  let socket;
  try {
    socket = await connect(gw, opts);
  } catch (err) {
    return err;
  }
  socket.close();
  throw new Error(`expected the connection to be refused, but it was accepted (options ${JSON.stringify(opts)})`);
}

/**
 * Record every `event` the socket receives (first argument of each) from now
 * on. Returns a collector: `items`, `waitFor(pred, ms)`, `waitForCount(n, ms)`.
 */
export function collect(socket, event) {
  const items = [];
  const waiters = new Set();
  const listener = (payload) => {
    items.push(payload);
    for (const w of waiters) w.check();
  };
  socket.on(event, listener);
  const c = {
    event,
    items,
    get length() {
      return items.length;
    },
    stop() {
      socket.off(event, listener);
    },
    clear() {
      items.length = 0;
    },
    /** first recorded item (already received or future) matching pred */
    waitFor(pred = () => true, timeoutMs = 5_000) {
      return new Promise((resolve, reject) => {
        const w = {
          check() {
            const hit = items.find((x) => pred(x));
            if (hit !== undefined) {
              waiters.delete(w);
              clearTimeout(timer);
              resolve(hit);
              return true;
            }
            return false;
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`timed out after ${timeoutMs} ms waiting for a matching "${event}"; received: ${JSON.stringify(items)}`));
        }, timeoutMs);
        if (!w.check()) waiters.add(w);
      });
    },
    /** wait until at least n items matching pred (default all) have been recorded */
    waitForCount(n, timeoutMs = 5_000, pred = () => true) {
      return new Promise((resolve, reject) => {
        const w = {
          check() {
            const hits = items.filter((x) => pred(x));
            if (hits.length >= n) {
              waiters.delete(w);
              clearTimeout(timer);
              resolve(hits);
              return true;
            }
            return false;
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(
            new Error(
              `timed out after ${timeoutMs} ms waiting for ${n} "${event}" events, got ${items.filter((x) => pred(x)).length}: ${JSON.stringify(items).slice(0, 4000)}`,
            ),
          );
        }, timeoutMs);
        if (!w.check()) waiters.add(w);
      });
    },
  };
  return c;
}

/** Wait for the next `event` (after this call) that matches `predicate`. */
export function waitFor(socket, event, predicate = () => true, timeoutMs = 5_000) {
  return new Promise((resolve, reject) => {
    const listener = (payload) => {
      if (predicate(payload)) {
        clearTimeout(timer);
        socket.off(event, listener);
        resolve(payload);
      }
    };
    const timer = setTimeout(() => {
      socket.off(event, listener);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for "${event}"`));
    }, timeoutMs);
    socket.on(event, listener);
  });
}

/** Emit with an acknowledgement; rejects if no ack within timeoutMs. */
export function emitAck(socket, event, ...args) {
  return socket.timeout(5_000).emitWithAck(event, ...args);
}

/**
 * Subscribe with an ack. Resolves `{ status, ack, statusBeforeAck }` where
 * `status` is the `job-status` for that job. Rejects if the ack is not
 * `{ ok: true }` or no job-status arrives.
 */
export async function subscribe(socket, jobId, { timeoutMs = 5_000 } = {}) {
  let status;
  let gotStatus;
  const statusP = new Promise((resolve) => (gotStatus = resolve));
  const onStatus = (s) => {
    if (s && s.jobId === jobId && status === undefined) {
      status = s;
      gotStatus(s);
    }
  };
  socket.on('job-status', onStatus);
  let timer;
  try {
    const ack = await socket.timeout(timeoutMs).emitWithAck('subscribe-job', jobId);
    const statusBeforeAck = status !== undefined;
    if (!ack || ack.ok !== true) throw new Error(`subscribe-job ${jobId} refused: ${JSON.stringify(ack)}`);
    const s = await Promise.race([
      statusP,
      new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs, undefined))),
    ]);
    if (s === undefined) throw new Error(`subscribe-job ${jobId}: ack ${JSON.stringify(ack)} but no job-status`);
    return { status: s, ack, statusBeforeAck };
  } finally {
    clearTimeout(timer);
    socket.off('job-status', onStatus);
  }
}

/** Assert that nothing matching arrives on `collector` within `ms`. */
export async function expectSilence(collector, pred, ms = 300) {
  const before = collector.items.filter(pred).length;
  await sleep(ms);
  const after = collector.items.filter(pred);
  if (after.length !== before) {
    throw new Error(`expected no "${collector.event}" but received ${JSON.stringify(after.slice(before))}`);
  }
}

/** Checks that a seq list is exactly from..to, contiguous and ordered. */
export function expectedSeqs(from, to) {
  const r = [];
  for (let i = from; i <= to; i++) r.push(i);
  return r;
}
