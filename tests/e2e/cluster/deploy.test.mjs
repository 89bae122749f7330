// The deployment files, checked with real parts where no Docker engine is
// at hand:
//
// - docker-compose.yml is parsed and validated by Debian's docker-compose
//   (`docker-compose config` needs no engine), and what it says must agree
//   with the gateway, the Dockerfile and deploy/nginx.conf;
// - the Dockerfile's build step is run as written, and the binary it builds
//   is started the way the image starts it (entrypoint, command, ENV, an
//   unprivileged user, an empty working directory) with the environment
//   compose gives an instance, its service addresses replaced by this
//   machine's; then a stock socket.io-client follows a job on it.
//
// deploy/nginx.conf itself is what the other cluster tests run through.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import YAML from 'yaml';

import { API_KEY, BIN, JWT_SECRET, REPO_ROOT, SHARED_REDIS_URL, Client, createDatabase, freePort, nginxConfig, uniqueUser, until } from './lib/cluster.mjs';

const execFileP = promisify(execFile);
const COMPOSE_FILE = path.join(REPO_ROOT, 'docker-compose.yml');
const DOCKERFILE = path.join(REPO_ROOT, 'Dockerfile');

/** `docker-compose config` on `file` with `env`: `{ code, stdout, stderr }`. */
async function composeConfig(file, env) {
  try {
    const { stdout, stderr } = await execFileP('docker-compose', ['-f', file, 'config'], {
      cwd: path.dirname(file),
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    if (err.code === 'ENOENT') throw new Error('docker-compose is missing: apt-get install docker-compose (tests/run.sh installs it)');
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

const SECRETS = { LEADGATE_JWT_SECRET: JWT_SECRET, LEADGATE_API_KEYS: API_KEY };

/** The Dockerfile as stages: `[{ from, steps: [{ op, args }] }]`. */
function dockerfileStages() {
  const stages = [];
  const text = fs.readFileSync(DOCKERFILE, 'utf8').replace(/\\\n/g, ' ');
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const [, op, args] = /^(\w+)\s+(.*)$/.exec(line);
    if (op.toUpperCase() === 'FROM') stages.push({ from: args, steps: [] });
    else stages.at(-1).steps.push({ op: op.toUpperCase(), args: args.trim() });
  }
  return stages;
}

const jsonOrShell = (args) => (args.startsWith('[') ? JSON.parse(args) : ['sh', '-c', args]);

let composed;
before(async () => {
  const r = await composeConfig(COMPOSE_FILE, SECRETS);
  assert.equal(r.code, 0, `docker-compose config failed:\n${r.stderr}`);
  composed = YAML.parse(r.stdout);
});

test('compose: docker-compose validates the file; the services are the ones documented', async () => {
  assert.deepEqual(Object.keys(composed.services).sort(), ['lb', 'leadgate-1', 'leadgate-2', 'postgres', 'redis', 'worker']);
  assert.deepEqual(composed.services['leadgate-1'].environment, composed.services['leadgate-2'].environment);
  // The load balancer mounts the configuration the other tests run through.
  const mount = composed.services.lb.volumes.map((v) => (typeof v === 'string' ? v : `${v.source}:${v.target}`)).find((v) => v.includes('nginx.conf'));
  assert.ok(mount?.startsWith(path.join(REPO_ROOT, 'deploy', 'nginx.conf') + ':/etc/nginx/nginx.conf'), `lb mounts deploy/nginx.conf: ${mount}`);
  assert.deepEqual(composed.services.lb.ports.map((p) => (typeof p === 'string' ? p : `${p.published}:${p.target}`)), ['3000:80']);
});

test('compose: a missing secret or a misspelt key is refused', async () => {
  const noSecret = await composeConfig(COMPOSE_FILE, { LEADGATE_API_KEYS: API_KEY });
  assert.notEqual(noSecret.code, 0);
  assert.match(noSecret.stderr, /set LEADGATE_JWT_SECRET/);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'leadgate-compose-'));
  try {
    const text = fs.readFileSync(COMPOSE_FILE, 'utf8');
    assert.ok(text.includes('    healthcheck:'));
    const broken = path.join(dir, 'docker-compose.yml');
    fs.writeFileSync(broken, text.replace('    healthcheck:', '    healthchek:'));
    const r = await composeConfig(broken, SECRETS);
    assert.notEqual(r.code, 0, 'an unknown key must fail validation');
    assert.match(r.stderr, /healthchek/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('compose, Dockerfile and nginx.conf agree with the gateway', async () => {
  const env = composed.services['leadgate-1'].environment;
  // Every variable compose sets is one the gateway reads.
  const { stdout: help } = await execFileP(BIN, ['serve', '--help']);
  for (const name of Object.keys(env)) assert.ok(help.includes(`[env: ${name}=`) || help.includes(`[env: ${name}]`), `leadgate serve reads ${name}`);
  // The proxy the gateways trust is nginx's address.
  assert.equal(env.LEADGATE_TRUSTED_PROXIES, composed.services.lb.networks.default.ipv4_address);
  // Compose waits longer for an instance to stop than the gateway drains.
  const grace = Number(env.LEADGATE_SHUTDOWN_GRACE ?? /\[env: LEADGATE_SHUTDOWN_GRACE=\] \[default: (\d+)\]/.exec(help)?.[1]);
  assert.ok(grace > 0, 'the shutdown grace is known');
  assert.ok(Number.parseInt(composed.services['leadgate-1'].stop_grace_period) > grace, 'stop_grace_period exceeds the shutdown grace');
  // nginx sends to port 3000 of each instance: where the image listens.
  const final = dockerfileStages().at(-1);
  const listen = final.steps.find((s) => s.op === 'ENV' && s.args.startsWith('LEADGATE_LISTEN='));
  assert.equal(listen?.args, 'LEADGATE_LISTEN=0.0.0.0:3000');
  assert.ok(final.steps.some((s) => s.op === 'EXPOSE' && s.args === '3000'));
  const shipped = fs.readFileSync(path.join(REPO_ROOT, 'deploy', 'nginx.conf'), 'utf8');
  assert.match(shipped, /server leadgate-1:3000 /);
  assert.match(shipped, /server leadgate-2:3000 /);
  // And the tests' substitution of it still applies.
  nginxConfig([{ port: 1 }, { port: 2 }], 3);
});

let db;
after(async () => {
  await db?.drop();
});

test("Dockerfile: its build step as written, then the binary started as the image starts it, with an instance's compose environment", { timeout: 30 * 60_000 }, async (t) => {
  const [build, final] = dockerfileStages();
  assert.deepEqual(
    build.steps.map((s) => s.op),
    ['WORKDIR', 'COPY', 'RUN'],
    'the build stage copies the repository and runs one command',
  );
  assert.equal(build.steps[1].args, '. .');
  const src = build.steps[0].args;
  // The build, in this checkout (the image's /src).
  const command = build.steps[2].args;
  t.diagnostic(`running the Dockerfile's build step: ${command}`);
  const built = await new Promise((resolve) => {
    const child = spawn('sh', ['-c', command], { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c) => (err = (err + c).slice(-4000)));
    child.once('exit', (code) => resolve({ code, err }));
  });
  assert.equal(built.code, 0, `${command} failed:\n${built.err}`);

  // The final stage: what it copies, and how it starts.
  const copy = final.steps.find((s) => s.op === 'COPY' && s.args.startsWith('--from=build '));
  const [from, to] = copy.args.split(/\s+/).slice(1);
  assert.ok(from.startsWith(`${src}/`), `the binary comes from the build's ${src}`);
  const binary = path.join(REPO_ROOT, path.relative(src, from));
  const entrypoint = jsonOrShell(final.steps.find((s) => s.op === 'ENTRYPOINT').args);
  const cmd = jsonOrShell(final.steps.find((s) => s.op === 'CMD').args);
  assert.equal(entrypoint[0], to, 'the entrypoint is the copied binary');
  const imageEnv = Object.fromEntries(final.steps.filter((s) => s.op === 'ENV').map((s) => s.args.split('=', 2)));

  db = await createDatabase();
  const port = await freePort();
  const composeEnv = composed.services['leadgate-1'].environment;
  const env = {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    ...imageEnv,
    ...composeEnv,
    // Addresses only: this machine's services instead of compose's.
    LEADGATE_LISTEN: imageEnv.LEADGATE_LISTEN.replace(/:3000$/, `:${port}`),
    LEADGATE_DATABASE_URL: db.url,
    LEADGATE_REDIS_URL: SHARED_REDIS_URL,
  };
  // The image runs as an unprivileged user in an empty directory of its own.
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'leadgate-image-'));
  const asUser = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
  if (asUser.uid) fs.chownSync(home, asUser.uid, asUser.gid);
  const child = spawn(binary, [...entrypoint.slice(1), ...cmd], { cwd: home, env: { ...env, HOME: home }, stdio: ['ignore', 'pipe', 'pipe'], ...asUser });
  let out = '';
  child.stdout.on('data', (c) => (out += c));
  child.stderr.on('data', (c) => (out += c));
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  t.after(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(home, { recursive: true, force: true });
  });
  const url = `http://127.0.0.1:${port}`;
  await until(
    async () => {
      if (child.exitCode !== null) throw new Error(`the gateway exited (${child.exitCode}):\n${out}`);
      return (await fetch(`${url}/readyz`).catch(() => null))?.status === 200;
    },
    { timeoutMs: 60_000, what: `/readyz 200 from the image's command (output: ${out.slice(-2000)})` },
  );

  // A stock socket.io-client follows a job that a worker reports over HTTP.
  const user = uniqueUser('image');
  const api = (p, body) =>
    fetch(url + p, { method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const created = await api('/api/v1/jobs', { user_id: user, total_leads: 1 });
  assert.equal(created.status, 201);
  const { jobId } = await created.json();
  const client = await new Client(url, { user, transports: null }).connected();
  t.after(() => client.close());
  await client.subscribe(jobId);
  assert.equal((await api(`/api/v1/jobs/${jobId}/events`, { type: 'progress', progress: 100, processedLeads: 1, totalLeads: 1 })).status, 202);
  await until(() => client.updates(jobId).length === 1, { what: 'the job-update' });

  // `docker stop` sends SIGTERM: the gateway drains and exits 0.
  child.kill('SIGTERM');
  const exit = await exited;
  assert.deepEqual(exit, { code: 0, signal: null }, out.slice(-2000));
  if (asUser.uid) assert.ok(!/permission denied/i.test(out), `no permission problem as an unprivileged user:\n${out}`);
});
