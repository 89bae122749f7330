// Helpers for the leads end-to-end tests (seed 000): one client type that
// speaks to Socket.IO namespace `/leads` (socket.io-client, WebSocket or
// long-polling) and to the plain WebSocket `/ws/leads/` (the `ws` package)
// with the same calls, the crawler's CLI (`leadgate leads import|claim`,
// `examples/crawler/crawl.sh`), fixture files, and a look into the
// crawl_requests table.
//
// Used by tests/e2e/leads*.test.mjs (one gateway from harness.mjs) and by
// tests/e2e/cluster/leads.test.mjs (gateways from cluster/lib/cluster.mjs):
// everything here takes a gateway as `{ url }` and a database URL, nothing
// more.

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { BIN, REPO_ROOT, socketFor, sleep, startGateway } from './harness.mjs';

const execFileP = promisify(execFile);

export const FIXTURES_DIR = path.join(REPO_ROOT, 'examples', 'crawler', 'fixtures');
export const CRAWL_SH = path.join(REPO_ROOT, 'examples', 'crawler', 'crawl.sh');

/** The example crawler's fixtures, as arrays. */
export function fixture(provider) {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES_DIR, `${provider}.json`), 'utf8'));
}
export function fixturePath(provider) {
  return path.join(FIXTURES_DIR, `${provider}.json`);
}

/**
 * The client kinds every leads scenario runs over: Socket.IO `/leads` over
 * each of the harness's TRANSPORTS, and the plain WebSocket `/ws/leads/`.
 */
export const KINDS = ['sio-websocket', 'sio-polling', 'sio-upgrade', 'ws'];

/** The fields of a lead on a page (leads_init / leads_updated). */
export const LEAD_FIELDS = [
  'provider',
  'project_id',
  'title',
  'company',
  'location',
  'remote',
  'rate',
  'skills',
  'url',
  'posted_at',
  'updated_at',
];
/** The fields of lead_details.details. */
export const DETAIL_FIELDS = [...LEAD_FIELDS, 'description', 'raw', 'created_at'];

/**
 * `startGateway()` from harness.mjs, then waits until `/readyz` answers 200:
 * the gateway prints its Listening line before it applies the migrations,
 * and the crawler tools need the leads tables.
 */
export async function startLeadsGateway(opts) {
  const gw = await startGateway(opts);
  const deadline = Date.now() + 30_000;
  for (;;) {
    let status = 0;
    try {
      status = (await fetch(`${gw.url}/readyz`, { signal: AbortSignal.timeout(5_000) })).status;
    } catch {
      /* not yet */
    }
    if (status === 200) return gw;
    if (Date.now() > deadline || gw.exited) {
      await gw.stop().catch(() => {});
      throw new Error(`GET /readyz did not answer 200 within 30 s (last ${status})\n${gw.output()}`);
    }
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/**
 * How a token reaches the gateway. Socket.IO knows all four; a browser's
 * plain WebSocket cannot set `auth`, so `/ws/leads/` reads the other three.
 */
export const TOKEN_SOURCES = {
  auth: (tok) => ({ auth: { token: tok } }),
  query: (tok) => ({ query: { token: tok } }),
  header: (tok) => ({ headers: { authorization: `Bearer ${tok}` } }),
  cookie: (tok) => ({ headers: { cookie: `theme=dark; token=${tok}; lang=de` } }),
};
export const SOURCES_OF = {
  'sio-websocket': ['auth', 'query', 'header', 'cookie'],
  'sio-polling': ['auth', 'query', 'header', 'cookie'],
  'sio-upgrade': ['auth', 'query', 'header', 'cookie'],
  ws: ['query', 'header', 'cookie'],
};

/** Why a connection was refused: `message` is the server's text. */
export class Refused extends Error {
  constructor(message, { closeCode, frames } = {}) {
    super(message);
    this.name = 'Refused';
    this.closeCode = closeCode;
    this.frames = frames;
  }
}

/**
 * A leads client of one kind. Every message it receives is recorded in
 * `messages` as `{ type, payload, t }` (`type` is the Socket.IO event name or
 * the frame's `type`). Use `connectLeads()` to make one.
 */
export class LeadsClient {
  /**
   * @param gw        `{ url, sockets? }` (a harness gateway or a cluster Gateway)
   * @param kind      one of KINDS
   * @param token     the JWT, or undefined for none
   * @param source    how the token is sent (a key of TOKEN_SOURCES); default
   *                  `auth` on Socket.IO, `query` on the plain WebSocket
   * @param path      `/ws/leads/` (default) or `/ws/leads`, plain WebSocket only
   * @param headers / query / auth: extra raw options (for odd cases)
   */
  constructor(gw, kind, { token: tok, source, path: wsPath = '/ws/leads/', headers = {}, query = {}, auth, name } = {}) {
    if (!KINDS.includes(kind)) throw new Error(`unknown leads client kind ${kind}`);
    this.kind = kind;
    this.name = name ?? kind;
    this.messages = [];
    this.waiters = new Set();
    this.closed = null; // { code, reason } (ws) or { reason } (sio)
    live.add(this);
    const src = source ?? (kind === 'ws' ? 'query' : 'auth');
    const opts = tok === undefined ? {} : TOKEN_SOURCES[src](tok);
    const allHeaders = { ...(opts.headers ?? {}), ...headers };
    const allQuery = { ...(opts.query ?? {}), ...query };

    if (kind === 'ws') {
      if (src === 'auth') throw new Error('a plain WebSocket cannot send a Socket.IO auth payload');
      const qs = new URLSearchParams(allQuery).toString();
      const url = `${gw.url.replace(/^http/, 'ws')}${wsPath}${qs ? `?${qs}` : ''}`;
      this.ws = new WebSocket(url, { headers: allHeaders, handshakeTimeout: 10_000 });
      this.ws.on('message', (data, isBinary) => {
        let payload;
        try {
          payload = JSON.parse(data.toString());
        } catch {
          payload = { type: '(not JSON)', raw: data.toString(), isBinary };
        }
        this.#record(payload?.type ?? '(no type)', payload);
      });
      this.ws.on('close', (code, reason) => {
        this.closed = { code, reason: reason.toString() };
        this.#wake();
      });
      this.ws.on('error', (err) => {
        this.transportError = err;
        this.#wake();
      });
    } else {
      const transport = kind.replace('sio-', '');
      const sioOpts = { namespace: '/leads', transport };
      if (Object.keys(allHeaders).length) sioOpts.extraHeaders = allHeaders;
      if (Object.keys(allQuery).length) sioOpts.query = allQuery;
      if (auth !== undefined) sioOpts.auth = auth;
      else if (opts.auth) sioOpts.auth = opts.auth;
      // socketFor registers the socket with a harness gateway (gw.sockets),
      // which closes it on stop().
      this.socket = socketFor(gw, sioOpts);
      this.socket.onAny((event, payload) => this.#record(event, payload));
      this.socket.on('connect_error', (err) => {
        this.connectError = err;
        this.#wake();
      });
      this.socket.on('disconnect', (reason) => {
        this.closed = { reason };
        this.#wake();
      });
    }
  }

  #record(type, payload) {
    this.messages.push({ type, payload, t: Date.now() });
    this.#wake();
  }

  #wake() {
    for (const w of this.waiters) w();
  }

  /** Resolves once `check()` returns something other than undefined. */
  #until(check, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      let timer;
      const w = () => {
        let v;
        try {
          v = check();
        } catch (err) {
          this.waiters.delete(w);
          clearTimeout(timer);
          reject(err);
          return;
        }
        if (v !== undefined) {
          this.waiters.delete(w);
          clearTimeout(timer);
          resolve(v);
        }
      };
      timer = setTimeout(() => {
        this.waiters.delete(w);
        reject(
          new Error(
            `${this.name}: timed out after ${timeoutMs} ms waiting for ${what}; received ${this.messages.length} messages: ` +
              JSON.stringify(this.messages.map((m) => m.payload)).slice(0, 3000),
          ),
        );
      }, timeoutMs);
      this.waiters.add(w);
      w();
    });
  }

  /**
   * Waits for the connection and the first message; resolves with that
   * message's payload if it is `leads_init`, otherwise rejects with a
   * `Refused` (Socket.IO: the connect_error message; plain WebSocket: the
   * error frame's detail, once the server closed, with `closeCode`).
   */
  async opened(timeoutMs = 15_000) {
    const outcome = await this.#until(
      () => {
        if (this.kind === 'ws') {
          const first = this.messages[0];
          if (first && first.type !== 'error') return first;
          if (first && this.closed) return first;
          if (!first && (this.closed || this.transportError)) return null;
        } else {
          if (this.connectError) return null;
          if (this.socket.connected && this.messages[0]) return this.messages[0];
        }
        return undefined;
      },
      timeoutMs,
      'the connection and its first message',
    );
    if (this.kind === 'ws') {
      if (outcome === null) {
        throw new Refused(`no frame before the connection ended (${this.transportError?.message ?? `close ${this.closed?.code}`})`, {
          closeCode: this.closed?.code,
        });
      }
      if (outcome.type === 'error') {
        throw new Refused(outcome.payload.detail, { closeCode: this.closed.code, frames: this.messages.map((m) => m.payload) });
      }
    } else if (outcome === null) {
      throw new Refused(this.connectError.message);
    }
    if (outcome.type !== 'leads_init') {
      throw new Error(`${this.name}: the first message after connect must be leads_init, got ${JSON.stringify(outcome.payload)}`);
    }
    this.init = outcome.payload;
    return outcome.payload;
  }

  /** The transport in use (Socket.IO: engine transport name; else 'ws'). */
  get transport() {
    return this.kind === 'ws' ? 'ws' : this.socket.io.engine?.transport?.name;
  }

  /** Sends one message: `{ type, ...payload }` as a frame, or event `type` with `payload`. */
  send(type, payload = {}) {
    if (this.kind === 'ws') this.ws.send(JSON.stringify({ type, ...payload }));
    else this.socket.emit(type, payload);
  }

  /**
   * Sends something odd: on the plain WebSocket `raw` is sent as it is (a
   * string is a text frame, a Buffer a binary frame); on Socket.IO it is
   * emitted as event `type`'s argument.
   */
  sendRaw(raw, type) {
    if (this.kind === 'ws') this.ws.send(raw, { binary: Buffer.isBuffer(raw) });
    else if (raw === undefined) this.socket.emit(type);
    else this.socket.emit(type, raw);
  }

  /** Payloads of one type, in order. */
  of(type) {
    return this.messages.filter((m) => m.type === type).map((m) => m.payload);
  }

  /**
   * The first message from index `from` on with `type` that satisfies `pred`
   * (already received, or the next one).
   */
  waitFor(type, pred = () => true, { from = 0, timeoutMs = 10_000 } = {}) {
    return this.#until(
      () => this.messages.slice(from).find((m) => m.type === type && pred(m.payload))?.payload,
      timeoutMs,
      `"${type}"${from ? ` after message #${from}` : ''}`,
    );
  }

  /**
   * Sends a request and resolves with the answer: the first message after it
   * that is not a push (`leads_updated`). The gateway answers one client's
   * requests in order.
   */
  async ask(type, payload, { timeoutMs = 10_000, raw = false } = {}) {
    const mark = this.messages.length;
    if (raw) this.sendRaw(payload, type);
    else this.send(type, payload);
    return this.#until(
      () => {
        const m = this.messages.slice(mark).find((x) => x.type !== 'leads_updated');
        return m ? { type: m.type, ...m.payload, _event: m.type } : undefined;
      },
      timeoutMs,
      `the answer to ${type} ${JSON.stringify(payload)?.slice(0, 200)}`,
    );
  }

  /** `get_leads`, expecting `leads_init`; resolves with it. */
  async getLeads(payload = {}) {
    const a = await this.ask('get_leads', payload);
    assert.equal(a._event, 'leads_init', `${this.name}: get_leads ${JSON.stringify(payload)} must be answered with leads_init, got ${JSON.stringify(a)}`);
    return strip(a);
  }

  /** A request that must be refused; resolves with the error's detail. */
  async expectError(type, payload, opts = {}) {
    const a = await this.ask(type, payload, opts);
    assert.equal(a._event, 'error', `${this.name}: ${type} ${JSON.stringify(payload)} must be answered with error, got ${JSON.stringify(a).slice(0, 500)}`);
    assert.equal(a.type, 'error', `error.type: ${JSON.stringify(a)}`);
    assert.equal(typeof a.detail, 'string', `error.detail must be a string: ${JSON.stringify(a)}`);
    assert.deepEqual(Object.keys(strip(a)).sort(), ['detail', 'type'], `error has exactly type and detail: ${JSON.stringify(a)}`);
    return a.detail;
  }

  /** Whether the connection is still open. */
  get open() {
    return this.kind === 'ws' ? this.ws.readyState === WebSocket.OPEN : this.socket.connected;
  }

  /** Resolves once the server closed the connection; `{ code, reason }` or `{ reason }`. */
  waitClosed(timeoutMs = 10_000) {
    return this.#until(() => this.closed ?? undefined, timeoutMs, 'the connection to close');
  }

  close() {
    live.delete(this);
    if (this.kind === 'ws') this.ws.terminate();
    else this.socket.close();
  }
}

const live = new Set();
/** Closes every leads client that is still open (for `after` hooks). */
export function closeAllLeadsClients() {
  for (const c of [...live]) c.close();
}

/** The payload without the helper's `_event`. */
function strip(a) {
  const { _event, ...rest } = a;
  return rest;
}

/**
 * Opens a leads client and waits for its `leads_init`; the client is closed
 * when test `t` ends (if given). Rejects with `Refused` if the gateway
 * refuses it.
 */
export async function connectLeads(gw, kind, opts = {}, t) {
  const c = new LeadsClient(gw, kind, opts);
  t?.after(() => c.close());
  try {
    await c.opened(opts.timeoutMs);
  } catch (err) {
    c.close();
    throw err;
  }
  return c;
}

/** Expects the connection to be refused; resolves with the `Refused`. */
export async function refusedLeads(gw, kind, opts = {}) {
  const c = new LeadsClient(gw, kind, opts);
  try {
    await c.opened();
  } catch (err) {
    if (err instanceof Refused) {
      if (kind === 'ws') await c.waitClosed().catch(() => {});
      err.client = c;
      c.close();
      return err;
    }
    c.close();
    throw err;
  }
  c.close();
  throw new Error(`${kind}: expected the connection to be refused, but it got leads_init (options ${JSON.stringify(opts)})`);
}

// ---------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------

/** Project ids of a page, as `provider/project_id` so both providers show. */
export const keys = (page) => page.projects.map((p) => `${p.provider}/${p.project_id}`);

/** Checks a leads_init / leads_updated against the contract's shape. */
export function assertPageShape(msg, type = 'leads_init') {
  assert.ok(msg && typeof msg === 'object', `${type} must be an object, got ${JSON.stringify(msg)}`);
  assert.equal(msg.type, type, `${type}.type`);
  assert.ok(Array.isArray(msg.projects), `${type}.projects must be an array: ${JSON.stringify(msg).slice(0, 500)}`);
  assert.ok(msg.pagination && typeof msg.pagination === 'object', `${type}.pagination: ${JSON.stringify(msg.pagination)}`);
  assert.deepEqual(Object.keys(msg.pagination).sort(), ['page', 'page_size', 'total'], `${type}.pagination fields`);
  for (const p of msg.projects) {
    assert.deepEqual(Object.keys(p).sort(), [...LEAD_FIELDS].sort(), `a lead on a page has exactly ${LEAD_FIELDS}: ${JSON.stringify(p)}`);
    assert.equal(typeof p.provider, 'string', `lead.provider: ${JSON.stringify(p)}`);
    assert.ok(p.provider.length > 0, 'lead.provider is not empty');
    assert.equal(typeof p.project_id, 'string', `lead.project_id is a string: ${JSON.stringify(p)}`);
    assert.equal(typeof p.title, 'string');
    assert.ok(Array.isArray(p.skills), `lead.skills is an array: ${JSON.stringify(p)}`);
    assert.ok(!Number.isNaN(Date.parse(p.updated_at)), `lead.updated_at is a timestamp: ${JSON.stringify(p)}`);
    assert.ok(p.posted_at === null || !Number.isNaN(Date.parse(p.posted_at)), `lead.posted_at: ${JSON.stringify(p)}`);
  }
  assert.ok(msg.projects.length <= msg.pagination.page_size, `${type}: more projects than page_size`);
}

/**
 * What a page must hold, computed from the imported leads: `all` is every
 * lead as `{ provider, project_id, posted_at?, seq }` (seq = import order,
 * later = newer row), `filterFn` selects, then newest posted_at first,
 * leads without posted_at last, ties newest row first.
 */
export function expectedKeys(all, { page = 1, page_size = 100, filterFn = () => true } = {}) {
  const sorted = all.filter(filterFn).sort((a, b) => {
    const pa = a.posted_at ? Date.parse(a.posted_at) : null;
    const pb = b.posted_at ? Date.parse(b.posted_at) : null;
    if (pa !== pb) {
      if (pa === null) return 1;
      if (pb === null) return -1;
      return pb - pa;
    }
    return b.seq - a.seq;
  });
  return {
    keys: sorted.slice((page - 1) * page_size, page * page_size).map((l) => `${l.provider}/${l.project_id}`),
    total: sorted.length,
  };
}

/** Asserts a page: type, pagination and exactly `want.keys` in that order. */
export function assertPage(msg, { page, page_size, want }, type = 'leads_init') {
  assertPageShape(msg, type);
  assert.deepEqual(
    { page: msg.pagination.page, page_size: msg.pagination.page_size, total: msg.pagination.total },
    { page, page_size, total: want.total },
    `${type}.pagination`,
  );
  assert.deepEqual(keys(msg), want.keys, `${type}: the leads of page ${page} (size ${page_size}) in order`);
}

// ---------------------------------------------------------------------------
// The crawler side: CLI, example crawler, fixtures, crawl_requests
// ---------------------------------------------------------------------------

async function waitForBinary() {
  const deadline = Date.now() + 120_000;
  while (!fs.existsSync(BIN)) {
    if (Date.now() > deadline) throw new Error(`leadgate binary not found at ${BIN} (build it, or set LEADGATE_BIN)`);
    await sleep(500);
  }
}

/** The environment of the crawler tools: the gateway's database, optional Redis. */
export function crawlerEnv({ databaseUrl, redisUrl, prefix, extra = {} }) {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('LEADGATE_')) delete env[k];
  env.LEADGATE_DATABASE_URL = databaseUrl;
  env.RUST_LOG = 'warn';
  if (redisUrl) env.LEADGATE_REDIS_URL = redisUrl;
  if (prefix) env.LEADGATE_REDIS_PREFIX = prefix;
  return { ...env, ...extra };
}

let scratch;
/** A temp directory for this process's fixture files (removed at exit). */
export function scratchDir() {
  if (!scratch) {
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'leadgate-e2e-leads-'));
    process.on('exit', () => fs.rmSync(scratch, { recursive: true, force: true }));
  }
  return scratch;
}

let fileNo = 0;
/** Writes `content` (a value: JSON-encoded; a string: as is) to a new temp file. */
export function writeFile(content, name = `leads-${++fileNo}.json`) {
  const file = path.join(scratchDir(), name);
  fs.writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content, null, 1));
  return file;
}

/**
 * Runs `leadgate <args>` with the crawler environment; never rejects on a
 * non-zero exit: resolves `{ code, stdout, stderr }`.
 */
export async function leadgateCli(args, envOpts) {
  await waitForBinary();
  try {
    const { stdout, stderr } = await execFileP(BIN, args, { env: crawlerEnv(envOpts), cwd: scratchDir(), timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    if (typeof err.code !== 'number') throw err;
    return { code: err.code, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

/**
 * `leadgate leads import FILE --provider P [--request N]`; `leads` is a path
 * or an array (written to a temp file). Fails loudly unless it exits 0.
 */
export async function importLeads(envOpts, leads, provider, { request } = {}) {
  const file = typeof leads === 'string' ? leads : writeFile(leads);
  const args = ['leads', 'import', file, '--provider', provider];
  if (request !== undefined) args.push('--request', String(request));
  const gateways = envOpts.gateways ?? [];
  const before = await Promise.all(gateways.map(async (gw) => (await leadsChanges(gw)).noticed));
  const r = await leadgateCli(args, envOpts);
  if (r.code !== 0) throw new Error(`leadgate ${args.join(' ')} exited ${r.code}:\n${r.stdout}${r.stderr}`);
  // A gateway shows an import once it has noticed it (the import's
  // announcement, or the table poll), and pushes fresh pages shortly after.
  // Wait for both, so that a page asked for next shows the import and a
  // client connected next is not pushed it. Nothing else changes the leads
  // meanwhile, so the next change noticed is the import.
  await Promise.all(gateways.map((gw, i) => waitForPush(gw, before[i])));
  return r;
}

/** How many changes to the leads a gateway has noticed, and pushed, so far. */
async function leadsChanges(gw) {
  const text = await (await fetch(`${gw.url}/metrics`, { signal: AbortSignal.timeout(5_000) })).text();
  const value = (name) => {
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    if (line === undefined) throw new Error(`the gateway at ${gw.url} has no ${name} in /metrics`);
    return Number(line.split(' ').pop());
  };
  return { noticed: value('leadgate_leads_changes_total'), pushed: value('leadgate_leads_changes_pushed_total') };
}

async function waitForPush(gw, before) {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const { noticed, pushed } = await leadsChanges(gw);
    if (noticed > before && pushed >= noticed) return;
    if (Date.now() > deadline) {
      throw new Error(`the gateway at ${gw.url} did not notice and push the import within 15 s (noticed ${noticed}, pushed ${pushed}, before ${before})`);
    }
    await sleep(20);
  }
}

/** `leadgate leads claim --worker W [--provider P]` → `{ request_id, provider }` or null. */
export async function claim(envOpts, { worker = 'e2e-crawler', provider } = {}) {
  const args = ['leads', 'claim', '--worker', worker];
  if (provider !== undefined) args.push('--provider', provider);
  const r = await leadgateCli(args, envOpts);
  if (r.code !== 0) throw new Error(`leadgate ${args.join(' ')} exited ${r.code}:\n${r.stdout}${r.stderr}`);
  const out = r.stdout.trim();
  return out === '' ? null : JSON.parse(out);
}

/** `examples/crawler/crawl.sh --once` with LEADGATE=<binary>; fails loudly unless it exits 0. */
export async function runCrawler(envOpts) {
  await waitForBinary();
  try {
    return await execFileP('bash', [CRAWL_SH, '--once'], {
      env: crawlerEnv({ ...envOpts, extra: { LEADGATE: BIN } }),
      cwd: scratchDir(),
      timeout: 120_000,
    });
  } catch (err) {
    throw new Error(`crawl.sh --once failed (${err.code}):\n${err.stdout}${err.stderr}`);
  }
}

/**
 * One row of crawl_requests as `{ id, requested_by, provider, state,
 * claimed_by }`, straight from the database (psql or sqlite3), or null.
 */
export async function crawlRequest(databaseUrl, id) {
  const sql = `SELECT id, requested_by, COALESCE(provider, '<null>'), state, COALESCE(claimed_by, '<null>') FROM crawl_requests WHERE id = ${Number(id)}`;
  let out;
  if (databaseUrl.startsWith('sqlite:')) {
    const file = databaseUrl.replace(/^sqlite:\/\//, '').replace(/\?.*$/, '');
    try {
      ({ stdout: out } = await execFileP('sqlite3', ['-separator', '|', file, sql], { timeout: 30_000 }));
    } catch (err) {
      throw new Error(`cannot read ${file} with the sqlite3 CLI (install sqlite3): ${err.message}`);
    }
  } else {
    ({ stdout: out } = await execFileP('psql', [databaseUrl, '-v', 'ON_ERROR_STOP=1', '-Atc', sql], { timeout: 30_000 }));
  }
  out = out.trim();
  if (!out) return null;
  const [rid, requested_by, provider, state, claimed_by] = out.split('|');
  const nul = (v) => (v === '<null>' ? null : v);
  return { id: Number(rid), requested_by, provider: nul(provider), state, claimed_by: nul(claimed_by) };
}

/** Claims until nothing is queued; resolves with what was claimed. */
export async function drainRequests(envOpts) {
  const taken = [];
  for (let r = await claim(envOpts, { worker: 'e2e-drain' }); r; r = await claim(envOpts, { worker: 'e2e-drain' })) taken.push(r);
  return taken;
}

// ---------------------------------------------------------------------------
// The gateway's log
// ---------------------------------------------------------------------------

/**
 * The `queries=N` of every "Pushed leads_updated." debug line in `output`
 * (RUST_LOG must include leadgate=debug), in order.
 */
export function pushQueries(output) {
  const r = [];
  for (const line of output.split('\n')) {
    if (!line.includes('Pushed leads_updated.')) continue;
    const m = /queries[=:]\s*(\d+)/.exec(line);
    r.push(m ? Number(m[1]) : NaN);
  }
  return r;
}
