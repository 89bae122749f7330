// A job worker that reports its progress to every leadgate instance with
// nothing but a PostgreSQL client and a Redis client.
//
//   npm ci --prefix examples/node-worker
//   DATABASE_URL=postgres://… REDIS_URL=redis://127.0.0.1:6379 \
//     node examples/node-worker/worker.mjs --user alice [--leads 20] [--delay 200] [--fail] [--job ID]
//
// For each event it does what the leadgate contract asks of a worker: apply
// the event to the job's row (and log) in one transaction, taking the job's
// next seq, then PUBLISH the job-update, with that seq, on
// <prefix>job:<jobId>. Every gateway instance delivers it to the job's
// subscribers. It prints the job id first, so a browser can subscribe.

import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createClient } from 'redis';

const { values: args } = parseArgs({
  options: {
    user: { type: 'string', default: 'alice' },
    leads: { type: 'string', default: '20' },
    delay: { type: 'string', default: '200' },
    job: { type: 'string' },
    fail: { type: 'boolean', default: false },
  },
});
const prefix = process.env.LEADGATE_REDIS_PREFIX ?? 'leadgate:';
const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 });
const redis = createClient({ url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' });
await redis.connect();

// Each event type's effect on the jobs row, after `seq = seq + 1`.
const effects = {
  progress: (e) => [
    'progress = $2, processed_leads = $3, total_leads = $4',
    [e.progress, e.processedLeads, e.totalLeads],
  ],
  status: (e) => ['status = $2', [e.status]],
  log: () => ['', []],
  complete: (e) => [
    `status = 'completed', progress = 100, error_message = NULL, results = $2,
     processed_leads = COALESCE($3, processed_leads), enriched_leads = COALESCE($4, enriched_leads),
     high_score_leads = COALESCE($5, high_score_leads)`,
    [JSON.stringify(e.results), e.results.processed_leads, e.results.enriched_leads, e.results.high_score_leads],
  ],
  error: (e) => [`status = 'failed', error_message = $2`, [e.error]],
};

async function report(jobId, event) {
  const [set, params] = effects[event.type](event);
  const client = await db.connect();
  let seq;
  try {
    await client.query('BEGIN');
    const { rows } = await client.query(
      `UPDATE jobs SET seq = seq + 1, updated_at = now()${set ? ', ' + set : ''} WHERE id = $1 RETURNING seq`,
      [jobId, ...params],
    );
    if (rows.length === 0) throw new Error(`job ${jobId} not found`);
    seq = Number(rows[0].seq);
    if (event.type === 'log') {
      event.log.timestamp ??= new Date().toISOString();
      await client.query(
        'INSERT INTO job_logs (job_id, seq, level, message, created_at) VALUES ($1, $2, $3, $4, $5)',
        [jobId, seq, event.log.level, event.log.message, event.log.timestamp],
      );
    }
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  } finally {
    client.release();
  }
  // Published after the commit, so a gateway that reads the job on receipt
  // sees the event applied.
  await redis.publish(`${prefix}job:${jobId}`, JSON.stringify({ ...event, jobId, seq }));
}

async function createJob(userId, totalLeads) {
  const id = randomUUID();
  await db.query(
    'INSERT INTO jobs (id, user_id, total_leads, created_at, updated_at) VALUES ($1, $2, $3, now(), now())',
    [id, userId, totalLeads],
  );
  return id;
}

const total = Number(args.leads);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const jobId = args.job ?? (await createJob(args.user, total));
console.log(jobId);

try {
  await report(jobId, { type: 'status', status: 'processing', message: 'Scoring started' });
  let enriched = 0;
  let highScore = 0;
  for (let done = 1; done <= total; done++) {
    await sleep(Number(args.delay));
    enriched += 1;
    if (done % 3 === 0) highScore += 1;
    await report(jobId, { type: 'log', log: { level: 'info', message: `Scored lead ${done} of ${total}` } });
    await report(jobId, {
      type: 'progress',
      progress: Math.round((done / total) * 100),
      processedLeads: done,
      totalLeads: total,
    });
    if (args.fail && done === Math.ceil(total / 2)) {
      await report(jobId, { type: 'error', status: 'failed', error: 'Enrichment provider unreachable' });
      break;
    }
  }
  if (!args.fail) {
    await report(jobId, {
      type: 'complete',
      status: 'completed',
      results: { processed_leads: total, enriched_leads: enriched, high_score_leads: highScore },
    });
  }
} finally {
  await redis.quit();
  await db.end();
}
