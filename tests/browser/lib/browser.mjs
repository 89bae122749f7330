// Helpers of the browser tests: build an example with Vite, serve its dist/
// from 127.0.0.1, drive it in headless Chromium (Debian's /usr/bin/chromium
// through playwright-core; Playwright's own browser downloads are not used),
// poll what the page shows, and save screenshots to docs/screenshots/.
//
// The gateway, tokens, jobs, events and lead imports come from the
// end-to-end suite's helpers (tests/e2e/lib/harness.mjs and leads.mjs).

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual, promisify } from 'node:util';
import { REPO_ROOT, sleep } from '../../e2e/lib/harness.mjs';

const execFileP = promisify(execFile);

export const CHROMIUM = process.env.LEADGATE_TEST_CHROMIUM || '/usr/bin/chromium';
export const SCREENSHOTS = path.join(REPO_ROOT, 'docs', 'screenshots');

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Fails with a hint unless Chromium is installed: the browser tests never skip. */
export function requireChromium() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM}: the browser tests need it.\n` +
        '  Install Debian\'s Chromium:  apt-get update && apt-get install -y chromium\n' +
        '  (or set LEADGATE_TEST_CHROMIUM to another Chromium or Chrome binary).',
    );
  }
}

/** The examples' directories need their node_modules (npm ci) to build. */
function requireInstalled(dir, what) {
  if (!fs.existsSync(path.join(dir, 'node_modules'))) {
    throw new Error(`${what} has no node_modules: run  (cd ${path.relative(REPO_ROOT, dir) || '.'} && npm ci)`);
  }
}

// ---------------------------------------------------------------------------
// Build and serve an example
// ---------------------------------------------------------------------------

/**
 * `vite build` of examples/<app> into a new temp directory, with the
 * gateway's URL baked in as VITE_LEADGATE_URL. Returns the directory.
 */
export async function buildApp(app, gatewayUrl) {
  const dir = path.join(REPO_ROOT, 'examples', app);
  requireInstalled(dir, `examples/${app}`);
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), `leadgate-browser-${app}-`));
  const vite = path.join(dir, 'node_modules', 'vite', 'bin', 'vite.js');
  try {
    await execFileP(process.execPath, [vite, 'build', '--outDir', outDir, '--emptyOutDir', '--logLevel', 'warn'], {
      cwd: dir,
      env: { ...process.env, VITE_LEADGATE_URL: gatewayUrl },
      timeout: 180_000,
    });
  } catch (err) {
    throw new Error(`vite build of examples/${app} failed:\n${err.stdout ?? ''}${err.stderr ?? err.message}`);
  }
  return outDir;
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

/**
 * A static file server on 127.0.0.1 (random port) for a built app: files
 * from `root`, index.html for anything else. The root is set later
 * (`setRoot`), since the build needs the gateway, and the gateway needs
 * this server's origin. Resolves `{ origin, setRoot(dir), close() }`;
 * close() also removes the root (a build from buildApp).
 */
export async function serveStatic() {
  let root = null;
  const server = http.createServer((req, res) => {
    if (!root) {
      res.writeHead(503).end('not built yet');
      return;
    }
    let file = path.join(root, decodeURIComponent(new URL(req.url, 'http://x').pathname));
    if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      file = path.join(root, 'index.html');
    }
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'cache-control': 'no-store',
    });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    setRoot(dir) {
      root = path.resolve(dir);
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      if (root) fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------

/**
 * Headless Chromium with a fresh profile (`viewport`: the page's size). Resolves `{ context, page, log,
 * close() }`; `log` collects the page's console messages and uncaught
 * errors (shown when a wait times out).
 */
export async function openBrowser({ viewport = { width: 1100, height: 760 } } = {}) {
  requireChromium();
  const here = path.join(REPO_ROOT, 'tests', 'browser');
  requireInstalled(here, 'tests/browser');
  const { chromium } = await import('playwright-core');
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'leadgate-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport,
      timeout: 60_000,
    });
  } catch (err) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw new Error(`could not start ${CHROMIUM}: ${err.message}`);
  }
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(15_000);
  const log = [];
  page.on('console', (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
  page.log = log;
  return {
    context,
    page,
    log,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Saves a screenshot of the page to docs/screenshots/<name>.png (overwrites). */
export async function screenshot(page, name) {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  const file = path.join(SCREENSHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true, animations: 'disabled', caret: 'hide' });
  return file;
}

// ---------------------------------------------------------------------------
// Waiting for what the page shows
// ---------------------------------------------------------------------------

/**
 * Does `actual` have every key of `want`? A value of `want` may be a RegExp
 * (tested against the string), a function (a predicate) or anything else
 * (deep equality).
 */
export function matches(actual, want) {
  return Object.entries(want).every(([k, w]) => {
    const a = actual?.[k];
    if (w instanceof RegExp) return typeof a === 'string' && w.test(a);
    if (typeof w === 'function') return w(a);
    return isDeepStrictEqual(a, w);
  });
}

const show = (v) =>
  JSON.stringify(v, (k, x) => (x instanceof RegExp ? String(x) : typeof x === 'function' ? `<${x.name || 'predicate'}>` : x), 1);

/**
 * Polls `read(page)` until its result matches `want` (see `matches`);
 * resolves with it. On timeout the error shows the wanted and the last
 * seen values and the page's console.
 */
export async function until(page, what, read, want, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await read(page);
      if (matches(last, want)) return last;
    } catch (err) {
      last = `(could not read the page: ${err.message})`;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}\n  wanted: ${show(want)}\n  page shows: ${show(last)}\n` +
          `  page console:\n    ${(page.log ?? []).slice(-30).join('\n    ') || '(empty)'}`,
      );
    }
    await sleep(50);
  }
}
