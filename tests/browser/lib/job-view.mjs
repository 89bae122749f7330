// The job view scenario shared by examples/react-app (the useJobUpdates
// hook of seed 001) and examples/vue-app (the seed's Options API
// component): both render the same elements (#status, #progress, #processed,
// #enriched, #high-score, #log, #results, #error), so one scenario drives both.
//
// A job goes through its whole life over the worker HTTP API while the page
// follows it live (socket.io-client, long-polling then WebSocket, across
// origins: the page comes from another port than the gateway); a reload
// then shows the same from the job-status snapshot alone. A second job fails.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mustPost, newJob, startGateway, token, uniqueUser } from '../../e2e/lib/harness.mjs';
import { buildApp, openBrowser, requireChromium, screenshot, serveStatic, until } from './browser.mjs';

/** Everything the job view shows, read in one go. */
function readView(page) {
  return page.evaluate(() => {
    const text = (sel) => document.querySelector(sel)?.textContent.trim() ?? null;
    const progress = document.querySelector('#progress');
    return {
      waiting: text('#waiting'),
      status: text('#status'),
      message: text('#status-message') || null,
      progress: progress ? progress.value : null,
      progressLabel: text('#progress-label'),
      processed: text('#processed'),
      enriched: text('#enriched'),
      highScore: text('#high-score'),
      // "[info] message", without the <time>
      logs: [...document.querySelectorAll('#log li')].map((li) =>
        li.textContent.replace(li.querySelector('time')?.textContent ?? '', '').trim(),
      ),
      results: document.querySelector('#results') ? JSON.parse(text('#results')) : null,
      error: text('#error'),
    };
  });
}

const RESULTS = {
  total_leads: 10,
  processed_leads: 10,
  enriched_leads: 8,
  high_score_leads: 3,
  top_leads: [
    { company: 'Acme Digital GmbH', score: 97 },
    { company: 'Nordlicht IT', score: 91 },
    { company: 'Muster AG', score: 88 },
  ],
};

export function jobViewTests(app) {
  describe(`examples/${app} in Chromium`, () => {
    let gw;
    let web;
    let browser;
    let page;
    const polling = []; // long-polling answers to the page, across origins
    const websockets = [];

    before(async () => {
      requireChromium();
      web = await serveStatic();
      gw = await startGateway({ env: { LEADGATE_ALLOWED_ORIGINS: web.origin } });
      web.setRoot(await buildApp(app, gw.url));
      browser = await openBrowser();
      page = browser.page;
      page.on('response', (r) => {
        if (r.url().startsWith(`${gw.url}/socket.io/`) && r.url().includes('transport=polling')) {
          polling.push({ status: r.status(), allowOrigin: r.headers()['access-control-allow-origin'] });
        }
      });
      page.on('websocket', (ws) => websockets.push(ws.url()));
    });

    after(async () => {
      await browser?.close();
      await web?.close();
      await gw?.stop();
    });

    const view = (what, want, timeoutMs) => until(page, what, readView, want, timeoutMs);

    it('follows a job from pending to completed: status, progress bar, counters, live log, results; a reload shows the same', async () => {
      const user = uniqueUser(app);
      const jobId = await newJob(gw, user, 10);
      await page.goto(`${web.origin}/?${new URLSearchParams({ token: token({ sub: user }), job: jobId })}`);

      await view('the job-status of a new job', {
        waiting: null,
        status: 'pending',
        progress: 0,
        progressLabel: '0 %',
        processed: '0 / 10',
        enriched: '0',
        highScore: '0',
        logs: [],
        results: null,
        error: null,
      });
      // socket.io-client started on long-polling, from the page's origin to
      // the gateway's: CORS allowed it (LEADGATE_ALLOWED_ORIGINS).
      assert.ok(polling.length > 0, 'the page long-polled the gateway');
      for (const p of polling) assert.deepEqual(p, { status: 200, allowOrigin: web.origin }, 'a long-polling answer');

      const post = (event) => mustPost(gw, jobId, event);
      await post({ type: 'status', status: 'processing', message: 'Scoring started' });
      await view('status processing', { status: 'processing', message: 'Scoring started' });

      await post({ type: 'log', log: { level: 'info', message: 'Loaded 10 leads from leads.csv' } });
      await view('the first log line', { logs: ['[info] Loaded 10 leads from leads.csv'] });

      const logs = ['[info] Loaded 10 leads from leads.csv'];
      for (const [done, level, message] of [
        [3, 'warn', 'Lead 4 has no website: enrichment skipped'],
        [6, 'info', 'Scored 6 of 10 leads'],
        [10, 'info', 'Scored 10 of 10 leads'],
      ]) {
        await post({ type: 'progress', progress: done * 10, processedLeads: done, totalLeads: 10 });
        await view(`progress ${done * 10} %`, {
          status: 'processing',
          progress: done * 10,
          progressLabel: `${done * 10} %`,
          processed: `${done} / 10`,
        });
        await post({ type: 'log', log: { level, message } });
        logs.push(`[${level}] ${message}`);
        await view(`log line "${message}"`, { logs });
      }
      assert.ok(websockets.some((u) => u.startsWith(gw.url.replace('http:', 'ws:'))), `the client upgraded to WebSocket: ${websockets}`);

      await post({ type: 'complete', status: 'completed', results: RESULTS });
      const done = {
        status: 'completed',
        progress: 100,
        progressLabel: '100 %',
        processed: '10 / 10',
        enriched: '8',
        highScore: '3',
        logs,
        results: RESULTS,
        error: null,
      };
      await view('the completed job with its results', done);
      await screenshot(page, app);

      // A page opened now has only the job-status: the same view.
      await page.reload();
      await view('the completed job after a reload (job-status alone)', { ...done, message: null });
    });

    it('shows a failed job (error update), live and after a reload; opened from the form', async () => {
      const user = uniqueUser(app);
      const jobId = await newJob(gw, user, 5);
      await page.goto(`${web.origin}/`);
      await page.fill('input[name=token]', token({ sub: user }));
      await page.fill('input[name=job]', jobId);
      await page.click('button:text("Open")');
      await view('the job-status of a new job', { status: 'pending', processed: '0 / 5', error: null });

      const post = (event) => mustPost(gw, jobId, event);
      await post({ type: 'status', status: 'processing', message: 'Scoring started' });
      await post({ type: 'progress', progress: 40, processedLeads: 2, totalLeads: 5 });
      await post({ type: 'log', log: { level: 'error', message: 'Enrichment API answered 503' } });
      await view('the job at 40 %', { status: 'processing', progress: 40, processed: '2 / 5', logs: ['[error] Enrichment API answered 503'] });

      await post({ type: 'error', status: 'failed', error: 'Enrichment API unreachable after 3 retries' });
      const failed = {
        status: 'failed',
        error: 'Job failed: Enrichment API unreachable after 3 retries',
        progress: 40,
        progressLabel: '40 %',
        processed: '2 / 5',
        logs: ['[error] Enrichment API answered 503'],
        results: null,
      };
      await view('the failure', failed);

      await page.reload(); // the form put the token and job id into the query string
      await view('the failed job after a reload (job-status alone)', failed);
    });
  });
}
