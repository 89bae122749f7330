// A job worker that reports its progress to leadgate over the worker HTTP
// API. Node 18+ and nothing else: it uses the built-in fetch.
//
//   LEADGATE_URL=http://127.0.0.1:3000 LEADGATE_API_KEY=… \
//     node examples/http-worker.mjs --user alice [--leads 20] [--fail]
//
// It creates a job for the user, prints its id (subscribe to it from a
// browser), then works through the leads: status, progress, logs, and a
// final complete (or error, with --fail).

import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    user: { type: 'string', default: 'alice' },
    leads: { type: 'string', default: '20' },
    delay: { type: 'string', default: '200' },
    job: { type: 'string' },
    fail: { type: 'boolean', default: false },
  },
});
const base = process.env.LEADGATE_URL ?? 'http://127.0.0.1:3000';
const apiKey = process.env.LEADGATE_API_KEY;
if (!apiKey) {
  console.error('Set LEADGATE_API_KEY (in development mode: the api_key in .leadgate-dev.json).');
  process.exit(2);
}
const total = Number(args.leads);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(path, body) {
  const response = await fetch(base + path, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`${path}: ${response.status} ${answer.error}`);
  return answer;
}

const jobId = args.job ?? (await call('/api/v1/jobs', { user_id: args.user, total_leads: total })).jobId;
console.log(jobId);
const report = (event) => call(`/api/v1/jobs/${jobId}/events`, event);

await sleep(Number(args.delay));
await report({ type: 'status', status: 'processing', message: 'Scoring started' });
let enriched = 0;
let highScore = 0;
for (let done = 1; done <= total; done++) {
  await sleep(Number(args.delay));
  enriched += 1;
  if (done % 3 === 0) highScore += 1;
  await report({ type: 'log', log: { level: 'info', message: `Scored lead ${done} of ${total}` } });
  await report({
    type: 'progress',
    progress: Math.round((done / total) * 100),
    processedLeads: done,
    totalLeads: total,
  });
  if (args.fail && done === Math.ceil(total / 2)) {
    await report({ type: 'error', status: 'failed', error: 'Enrichment provider unreachable' });
    process.exit(0);
  }
}
await report({
  type: 'complete',
  status: 'completed',
  results: { processed_leads: total, enriched_leads: enriched, high_score_leads: highScore },
});
