// examples/leads-page (the leads page of seed 000 on a plain WebSocket to
// /ws/leads/) in headless Chromium: the loading state until leads_init, the
// list, paging, the filters (remote, provider, q), the details panel, and
// "Sync": disabled from the click until the crawler's leads_updated.
//
// The leads are the example crawler's fixtures, imported with `leadgate
// leads import` into the gateway's database; the gateway runs without Redis
// and notices imports by watching the leads table.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { sleep, token, uniqueUser } from '../e2e/lib/harness.mjs';
import { crawlRequest, expectedKeys, fixture, fixturePath, importLeads, startLeadsGateway } from '../e2e/lib/leads.mjs';
import { buildApp, openBrowser, requireChromium, screenshot, serveStatic, until } from './lib/browser.mjs';

/** Everything the leads page shows, read in one go. */
function readPage(page) {
  return page.evaluate(() => {
    const $ = (sel) => document.querySelector(sel);
    const shown = (sel) => ($(sel) && !$(sel).hidden ? $(sel).textContent.trim() : null);
    const details = $('#details');
    return {
      loading: shown('#loading'),
      table: !$('#leads').hidden,
      busy: $('#leads').getAttribute('aria-busy'),
      rows: [...document.querySelectorAll('#leads tbody tr')].map((tr) => [...tr.cells].map((td) => td.textContent.trim())),
      pageInfo: shown('#pager') === null ? null : $('#page-info').textContent,
      prevDisabled: $('#prev').disabled,
      nextDisabled: $('#next').disabled,
      pageSize: $('#page-size').value,
      providers: [...document.querySelectorAll('select[name=provider] option')].map((o) => o.value).filter(Boolean),
      syncDisabled: $('#sync').disabled,
      syncState: $('#sync-state').textContent,
      error: shown('#error'),
      details: details.hidden
        ? null
        : {
            title: details.querySelector('h2')?.textContent,
            fields: Object.fromEntries([...details.querySelectorAll('dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent])),
            description: details.querySelector('.description')?.textContent,
            raw: details.querySelector('pre') ? JSON.parse(details.querySelector('pre').textContent) : null,
          },
    };
  });
}

const LEAD_FIELDS = ['project_id', 'title', 'company', 'location', 'remote', 'rate', 'skills', 'url', 'posted_at', 'description'];

/** The leads in the database, as the page lists them (expectedKeys from leads.mjs orders them). */
class Leads {
  all = [];
  add(provider, leads) {
    for (const l of leads) this.all.push({ ...l, provider, seq: this.all.length + 1 });
  }
  /** The rows and "Page x of y · n leads" of a page, filtered by `filterFn`. */
  page({ page = 1, page_size = 100, filterFn } = {}) {
    const { keys, total } = expectedKeys(this.all, { page, page_size, filterFn });
    const byKey = new Map(this.all.map((l) => [`${l.provider}/${l.project_id}`, l]));
    const rows = keys.map((k) => row(byKey.get(k)));
    return { rows, pageInfo: `Page ${page} of ${Math.max(1, Math.ceil(total / page_size))} · ${total} leads` };
  }
}
const row = (l) => [l.title, l.company ?? '', l.location ?? '', l.remote ? 'yes' : 'no', l.rate ?? '', l.provider, l.posted_at?.slice(0, 10) ?? '–'];
/** q: some word of title, company or skills begins with `word` (one word, ASCII). */
const wordStarts = (l, word) =>
  [l.title, l.company ?? '', ...(l.skills ?? [])]
    .join(' ')
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .some((w) => w.startsWith(word));

describe('examples/leads-page in Chromium', () => {
  let gw;
  let web;
  let browser;
  let page;
  let env;
  const leads = new Leads();

  before(async () => {
    requireChromium();
    web = await serveStatic();
    gw = await startLeadsGateway({ env: { LEADGATE_ALLOWED_ORIGINS: web.origin } });
    env = { databaseUrl: gw.db.url, gateways: [gw] };
    for (const provider of ['freelance.de', 'xing']) {
      await importLeads(env, fixturePath(provider), provider);
      leads.add(provider, fixture(provider));
    }
    web.setRoot(await buildApp('leads-page', gw.url));
    browser = await openBrowser({ viewport: { width: 1280, height: 800 } });
    page = browser.page;
  });

  after(async () => {
    await browser?.close();
    await web?.close();
    await gw?.stop();
  });

  const shows = (what, want, timeoutMs) => until(page, what, readPage, want, timeoutMs);

  it('loads, pages, filters, opens details, and syncs: Sync stays disabled until leads_updated', async () => {
    // Hold the gateway's frames to the page until the loading state is seen:
    // the page's WebSocket goes through this route, which keeps what the
    // gateway sends in `held` until release().
    const held = [];
    let release;
    await page.routeWebSocket(/\/ws\/leads\//, (ws) => {
      const server = ws.connectToServer();
      let released = false;
      ws.onMessage((m) => server.send(m));
      server.onMessage((m) => (released ? ws.send(m) : held.push(m)));
      release = () => {
        released = true;
        for (const m of held.splice(0)) ws.send(m);
      };
    });
    await page.goto(`${web.origin}/?${new URLSearchParams({ token: token({ sub: uniqueUser('leads-page') }) })}`);
    await until(page, 'the gateway to send leads_init', () => held.map((m) => JSON.parse(m).type), { 0: 'leads_init' });
    await shows('the loading state (leads_init held back)', { loading: 'Loading leads…', table: false, pageInfo: null, syncDisabled: true });
    release();

    await shows('the first page (100 per page)', {
      loading: null,
      table: true,
      busy: 'false',
      ...leads.page(),
      prevDisabled: true,
      nextDisabled: true,
      pageSize: '100',
      providers: ['xing', 'freelance.de'],
      syncDisabled: false,
      error: null,
    });

    // Paging
    await page.selectOption('#page-size', '10');
    await shows('page 1 of 10', { ...leads.page({ page_size: 10 }), prevDisabled: true, nextDisabled: false, pageSize: '10' });
    await page.click('#next');
    await shows('page 2 of 10', { ...leads.page({ page: 2, page_size: 10 }), prevDisabled: false, nextDisabled: false });
    await page.click('#next');
    await shows('page 3 of 10 (the last)', { ...leads.page({ page: 3, page_size: 10 }), prevDisabled: false, nextDisabled: true });
    await page.click('#prev');
    await shows('page 2 again', { ...leads.page({ page: 2, page_size: 10 }), prevDisabled: false, nextDisabled: false });

    // Filters: each starts at page 1
    await page.selectOption('select[name=remote]', 'true');
    await shows('remote only', leads.page({ page_size: 10, filterFn: (l) => l.remote === true }));
    await page.selectOption('select[name=provider]', 'xing');
    await shows('remote on xing', leads.page({ page_size: 10, filterFn: (l) => l.remote === true && l.provider === 'xing' }));
    await page.fill('input[name=q]', 'python');
    const pythonRemoteXing = leads.page({
      page_size: 10,
      filterFn: (l) => l.remote === true && l.provider === 'xing' && wordStarts(l, 'python'),
    });
    assert.equal(pythonRemoteXing.rows.length, 2, 'the fixtures have two remote Python leads on xing');
    await shows('remote Python leads on xing', pythonRemoteXing);
    await page.selectOption('select[name=remote]', '');
    await page.selectOption('select[name=provider]', '');
    await page.fill('input[name=q]', 'postgresql');
    await shows('q=postgresql alone', leads.page({ page_size: 10, filterFn: (l) => wordStarts(l, 'postgresql') }));
    await page.fill('input[name=q]', '');
    await shows('no filter', { ...leads.page({ page_size: 10 }), busy: 'false' });

    // Details
    const lead = leads.all.find((l) => l.provider === 'freelance.de' && l.project_id === 'fd-1110'); // on page 1
    await page.locator('#leads tbody tr', { hasText: 'freelance.de' }).filter({ hasText: lead.title }).getByRole('button').click();
    const extra = Object.fromEntries(Object.entries(lead).filter(([k]) => !LEAD_FIELDS.includes(k) && k !== 'provider' && k !== 'seq'));
    await shows(`the details of ${lead.project_id}`, {
      details: {
        title: lead.title,
        fields: {
          Company: lead.company,
          Location: lead.location,
          Remote: 'yes',
          Rate: lead.rate,
          Skills: lead.skills.join(', '),
          Provider: `freelance.de · ${lead.project_id}`,
          Posted: lead.posted_at.slice(0, 10),
          Link: lead.url,
        },
        description: lead.description,
        raw: extra,
      },
    });

    // Sync: disabled from the click until leads_updated
    await page.click('#sync');
    const accepted = await shows('sync_accepted', { syncDisabled: true, syncState: /^Sync requested \(#\d+, queued\)…$/ });
    const requestId = Number(/#(\d+)/.exec(accepted.syncState)[1]);
    assert.equal((await crawlRequest(gw.db.url, requestId)).state, 'queued', 'the request waits for a crawler');
    await sleep(2_000); // longer than the gateway's table poll (1 s)
    assert.equal((await readPage(page)).syncDisabled, true, 'Sync stays disabled until leads_updated');

    const fresh = [
      {
        project_id: 'fd-1200',
        title: 'Realtime-Gateway Review (Rust, Socket.IO)',
        company: 'Leadgate Labs',
        location: 'Hamburg',
        remote: true,
        rate: '95 €/h',
        skills: ['Rust', 'Socket.IO', 'Redis'],
        url: 'https://freelance.de.example/projects/fd-1200',
        posted_at: '2026-11-22T08:00:00Z',
        description: 'Code review of a realtime gateway. Two weeks, remote.',
        duration_months: 1,
      },
    ];
    await importLeads(env, fresh, 'freelance.de', { request: requestId });
    leads.add('freelance.de', fresh);
    const updated = await shows('leads_updated: Sync enabled again, the new lead on top', {
      syncDisabled: false,
      syncState: /^Updated at /,
      ...leads.page({ page_size: 10 }),
    });
    assert.deepEqual(updated.rows[0], row(leads.all.at(-1)), 'the new lead is the newest');
    assert.equal((await crawlRequest(gw.db.url, requestId)).state, 'done');

    await page.locator('#leads tbody tr').first().getByRole('button').click();
    await shows('the details of the new lead', { details: (d) => d?.title === fresh[0].title });
    await screenshot(page, 'leads-page');
  });

  it('shows why a refused token was refused', async () => {
    const other = await browser.context.newPage();
    other.log = [];
    try {
      await other.goto(`${web.origin}/?token=not-a-jwt`);
      await until(other, 'the error frame', readPage, { error: 'invalid token: malformed', loading: null, table: false, syncDisabled: true });
    } finally {
      await other.close();
    }
  });
});
