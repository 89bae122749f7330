// The leads page of seed 000 on a plain WebSocket to leadgate's /ws/leads/.
// Every frame is one JSON object with a `type`. The gateway sends
// `leads_init` right after connecting and for every `get_leads`, pushes
// `leads_updated` (for this client's page and filter) when a crawler brings
// new data, answers `get_lead_details` with `lead_details` and `sync` with
// `sync_accepted`, and reports bad requests as `error { detail }`.

const LEADGATE_URL = import.meta.env.VITE_LEADGATE_URL || 'http://localhost:3000';

const $ = (selector) => document.querySelector(selector);
const filters = $('#filters');
const syncButton = $('#sync');

// What this client looks at; the gateway remembers the same and pushes
// updates for it.
const view = { page: 1, page_size: 100, filter: {} };
const providers = new Set();
let socket = null;
let syncing = false; // from the click on "Sync" until leads_updated arrives
let retryDelay = 1000;

function connect(token) {
  const url = new URL('/ws/leads/', LEADGATE_URL);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('token', token);
  setLoading(true);
  socket = new WebSocket(url);
  socket.onopen = () => {
    retryDelay = 1000;
    // After a reconnect the gateway starts again at page 1 with no filter.
    if (view.page !== 1 || view.page_size !== 100 || Object.keys(view.filter).length) requestLeads();
  };
  socket.onmessage = (event) => handle(JSON.parse(event.data));
  socket.onclose = (event) => {
    syncing = false;
    syncButton.disabled = true;
    if (event.code === 1008) {
      // A refused token: the error frame before the close said why.
      $('#loading').hidden = true;
      return;
    }
    showError(`Connection lost; reconnecting in ${retryDelay / 1000} s…`);
    setTimeout(() => connect(token), retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  };
}

function send(message) {
  if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function requestLeads() {
  setLoading(true);
  send({ type: 'get_leads', ...view });
}

function handle(message) {
  switch (message.type) {
    case 'leads_init':
      showError(null);
      renderLeads(message);
      break;
    case 'leads_updated':
      renderLeads(message);
      syncing = false;
      syncButton.disabled = false;
      $('#sync-state').textContent = `Updated at ${new Date().toLocaleTimeString()}`;
      break;
    case 'lead_details':
      renderDetails(message.details);
      break;
    case 'sync_accepted':
      $('#sync-state').textContent = `Sync requested (#${message.request_id}, ${message.state})…`;
      break;
    case 'error':
      showError(message.detail);
      setLoading(false);
      break;
  }
}

function setLoading(loading) {
  $('#loading').hidden = !loading || !$('#leads').hidden;
  $('#leads').setAttribute('aria-busy', String(loading));
}

function showError(text) {
  $('#error').hidden = !text;
  $('#error').textContent = text ?? '';
}

// A small element builder: text is always set as text, never as HTML.
function h(tag, props = {}, ...children) {
  const element = Object.assign(document.createElement(tag), props);
  element.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return element;
}

const day = (timestamp) => (timestamp ? timestamp.slice(0, 10) : '–');

function renderLeads({ projects, pagination }) {
  Object.assign(view, { page: pagination.page, page_size: pagination.page_size });
  const rows = projects.map((lead) =>
    h('tr', {},
      h('td', {}, h('button', {
        type: 'button',
        className: 'link',
        textContent: lead.title,
        onclick: () => send({ type: 'get_lead_details', project_id: lead.project_id, provider: lead.provider }),
      })),
      h('td', { textContent: lead.company ?? '' }),
      h('td', { textContent: lead.location ?? '' }),
      h('td', { textContent: lead.remote ? 'yes' : 'no' }),
      h('td', { textContent: lead.rate ?? '' }),
      h('td', { textContent: lead.provider }),
      h('td', { textContent: day(lead.posted_at) }),
    ),
  );
  if (rows.length === 0) {
    rows.push(h('tr', {}, h('td', { colSpan: 7, className: 'empty', textContent: 'No leads here. "Sync" asks a crawler for new ones.' })));
  }
  $('#leads tbody').replaceChildren(...rows);
  $('#leads').hidden = false;
  $('#pager').hidden = false;
  setLoading(false);
  syncButton.disabled = syncing;

  const pages = Math.max(1, Math.ceil(pagination.total / pagination.page_size));
  $('#page-info').textContent = `Page ${pagination.page} of ${pages} · ${pagination.total} leads`;
  $('#prev').disabled = pagination.page <= 1;
  $('#next').disabled = pagination.page >= pages;
  $('#page-size').value = String(pagination.page_size);

  // The provider filter offers every provider seen so far.
  for (const lead of projects) {
    if (providers.has(lead.provider)) continue;
    providers.add(lead.provider);
    filters.provider.append(h('option', { value: lead.provider, textContent: lead.provider }));
  }
}

function renderDetails(lead) {
  const field = (name, value) => [h('dt', { textContent: name }), h('dd', {}, value ?? '–')];
  $('#details').replaceChildren(
    h('button', { type: 'button', className: 'close', textContent: '×', title: 'close', onclick: () => ($('#details').hidden = true) }),
    h('h2', { textContent: lead.title }),
    h('dl', {},
      field('Company', lead.company),
      field('Location', lead.location),
      field('Remote', lead.remote ? 'yes' : 'no'),
      field('Rate', lead.rate),
      field('Skills', (lead.skills ?? []).join(', ')),
      field('Provider', `${lead.provider} · ${lead.project_id}`),
      field('Posted', day(lead.posted_at)),
      field('Link', lead.url ? h('a', { href: lead.url, target: '_blank', rel: 'noopener', textContent: lead.url }) : null),
    ),
    h('p', { className: 'description', textContent: lead.description ?? '' }),
    // `raw`: the fields the crawler sent beyond the leads table's
    ...(Object.keys(lead.raw ?? {}).length
      ? [h('h3', { textContent: 'More from the crawler' }), h('pre', { textContent: JSON.stringify(lead.raw, null, 2) })]
      : []),
  );
  $('#details').hidden = false;
}

// Filters: a new filter starts at page 1. The search waits for a pause in typing.
function applyFilters() {
  const filter = {};
  if (filters.remote.value) filter.remote = filters.remote.value === 'true';
  if (filters.provider.value) filter.provider = filters.provider.value;
  if (filters.q.value.trim()) filter.q = filters.q.value.trim();
  Object.assign(view, { page: 1, filter });
  requestLeads();
}
let typing;
filters.addEventListener('change', applyFilters);
filters.q.addEventListener('input', () => {
  clearTimeout(typing);
  typing = setTimeout(applyFilters, 300);
});
filters.addEventListener('submit', (event) => {
  event.preventDefault();
  clearTimeout(typing);
  applyFilters();
});

$('#prev').onclick = () => {
  view.page -= 1;
  requestLeads();
};
$('#next').onclick = () => {
  view.page += 1;
  requestLeads();
};
$('#page-size').onchange = (event) => {
  Object.assign(view, { page: 1, page_size: Number(event.target.value) });
  requestLeads();
};

// "Sync" asks for a crawl (of the chosen provider, or of all) and stays
// disabled until the crawler's data arrives as leads_updated.
syncButton.onclick = () => {
  syncing = true;
  syncButton.disabled = true;
  $('#sync-state').textContent = 'Sync requested…';
  send(view.filter.provider ? { type: 'sync', provider: view.filter.provider } : { type: 'sync' });
};

// The token comes from the query string (?token=…) or from the form.
const token = new URLSearchParams(window.location.search).get('token');
if (token) {
  connect(token);
} else {
  $('#loading').hidden = true;
  $('#login').hidden = false;
  $('#login').onsubmit = (event) => {
    event.preventDefault();
    $('#login').hidden = true;
    connect(new FormData(event.currentTarget).get('token').trim());
  };
}
