// Shared assertions on the Socket.IO payloads of the contract.
import assert from 'node:assert/strict';

export const JOB_STATUSES = ['pending', 'queued', 'processing', 'completed', 'failed', 'cancelled'];
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'];
export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const isCount = (v) => typeof v === 'number' && Number.isFinite(v) && v >= 0;

/** A parseable timestamp string (RFC 3339 / ISO 8601). */
export function assertTimestamp(ts, what = 'timestamp') {
  assert.equal(typeof ts, 'string', `${what} must be a string, got ${JSON.stringify(ts)}`);
  assert.ok(!Number.isNaN(Date.parse(ts)), `${what} must be a parseable date, got ${JSON.stringify(ts)}`);
}

/** Every contract field of `job-status`, with its type. */
export function assertJobStatusShape(s, jobId) {
  assert.ok(s && typeof s === 'object', `job-status must be an object, got ${JSON.stringify(s)}`);
  const fields = [
    'jobId',
    'status',
    'progress',
    'total_leads',
    'processed_leads',
    'enriched_leads',
    'high_score_leads',
    'error_message',
    'recentLogs',
    'seq',
  ];
  for (const f of fields) assert.ok(Object.hasOwn(s, f), `job-status lacks field "${f}": ${JSON.stringify(s)}`);
  if (jobId !== undefined) assert.equal(s.jobId, jobId, 'job-status.jobId');
  assert.ok(JOB_STATUSES.includes(s.status), `job-status.status ${JSON.stringify(s.status)} is not one of ${JOB_STATUSES}`);
  assert.ok(isCount(s.progress) && s.progress <= 100, `job-status.progress must be 0..100, got ${JSON.stringify(s.progress)}`);
  assert.ok(isCount(s.total_leads) || s.total_leads === null, `job-status.total_leads: ${JSON.stringify(s.total_leads)}`);
  for (const f of ['processed_leads', 'enriched_leads', 'high_score_leads']) {
    assert.ok(isCount(s[f]), `job-status.${f} must be a non-negative number, got ${JSON.stringify(s[f])}`);
  }
  assert.ok(s.error_message === null || typeof s.error_message === 'string', `job-status.error_message: ${JSON.stringify(s.error_message)}`);
  assert.ok(Array.isArray(s.recentLogs), `job-status.recentLogs must be an array, got ${JSON.stringify(s.recentLogs)}`);
  for (const [i, l] of s.recentLogs.entries()) {
    assert.ok(LOG_LEVELS.includes(l.level), `recentLogs[${i}].level ${JSON.stringify(l.level)}`);
    assert.equal(typeof l.message, 'string', `recentLogs[${i}].message`);
    assertTimestamp(l.timestamp, `recentLogs[${i}].timestamp`);
  }
  assert.ok(Number.isInteger(s.seq) && s.seq >= 0, `job-status.seq must be a non-negative integer, got ${JSON.stringify(s.seq)}`);
}

/** The job-status of a job that was just created and never got an event. */
export function assertFreshJobStatus(s, jobId, totalLeads) {
  assertJobStatusShape(s, jobId);
  assert.equal(s.status, 'pending', 'a new job is pending');
  assert.equal(s.progress, 0, 'a new job has progress 0');
  if (totalLeads !== undefined) assert.equal(s.total_leads, totalLeads, 'total_leads as given to POST /api/v1/jobs');
  assert.equal(s.processed_leads, 0);
  assert.equal(s.enriched_leads, 0);
  assert.equal(s.high_score_leads, 0);
  assert.equal(s.error_message, null);
  assert.deepEqual(s.recentLogs, [], 'a new job has no logs');
  assert.equal(s.seq, 0, 'a new job has seq 0');
}

/**
 * A job-update mirrors the posted event: every posted field is present with
 * the same value, plus `jobId` and `seq`. A log without timestamp gets one.
 */
export function assertUpdateMirrors(update, posted, jobId, seq) {
  assert.ok(update && typeof update === 'object', `job-update must be an object, got ${JSON.stringify(update)}`);
  assert.equal(update.jobId, jobId, `job-update.jobId in ${JSON.stringify(update)}`);
  if (seq !== undefined) assert.equal(update.seq, seq, `job-update.seq in ${JSON.stringify(update)}`);
  assert.ok(Number.isInteger(update.seq), `job-update.seq must be an integer: ${JSON.stringify(update)}`);
  for (const [k, v] of Object.entries(posted)) {
    if (k === 'seq') continue;
    if (k === 'log') {
      assert.ok(update.log && typeof update.log === 'object', `job-update.log: ${JSON.stringify(update)}`);
      assert.equal(update.log.level, v.level, 'job-update.log.level');
      assert.equal(update.log.message, v.message, 'job-update.log.message');
      assertTimestamp(update.log.timestamp, 'job-update.log.timestamp');
      if (v.timestamp !== undefined) {
        assert.equal(Date.parse(update.log.timestamp), Date.parse(v.timestamp), `job-update.log.timestamp must be the posted ${v.timestamp}, got ${update.log.timestamp}`);
      }
      continue;
    }
    assert.deepEqual(update[k], v, `job-update.${k} must mirror the posted value in ${JSON.stringify(update)}`);
  }
}

/** The seq numbers of a list of updates are exactly from..to in order. */
export function assertSeqRange(updates, from, to, what = 'job-update seqs') {
  const got = updates.map((u) => u.seq);
  const want = [];
  for (let i = from; i <= to; i++) want.push(i);
  assert.deepEqual(got, want, `${what}: expected ${from}..${to} contiguous and ordered`);
}

/** err.message of a connect_error mentions `word` (case-insensitive) and no internals. */
export function assertRefusal(err, word) {
  assert.ok(err instanceof Error, `expected a connect_error, got ${err}`);
  const msg = String(err.message);
  if (word) assert.match(msg, new RegExp(word, 'i'), `connect_error message should mention "${word}", got ${JSON.stringify(msg)}`);
  assert.ok(msg.length > 0 && msg.length < 300, `connect_error message should be short and human-readable: ${JSON.stringify(msg)}`);
  assert.doesNotMatch(msg, /panicked|\.rs:\d|stack backtrace|sqlx|SELECT |thread '/i, `connect_error must not leak internals: ${msg}`);
}
