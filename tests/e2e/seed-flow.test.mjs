// Scenario 1: the client flow of seed 001 (React hook / Vue component), and
// the job-status snapshot that follows every kind of job-update.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS,
  assertTransport,
  startGateway,
  token,
  newJob,
  createJob,
  mustPost,
  socketFor,
  connect,
  collect,
  subscribe,
  uniqueUser,
  sleep,
} from './lib/harness.mjs';
import { assertFreshJobStatus, assertJobStatusShape, assertUpdateMirrors, assertSeqRange } from './lib/asserts.mjs';

let gw;
before(async () => {
  gw = await startGateway();
});
after(async () => {
  await gw?.stop();
});

/** The state reducer of seed 001's React hook / Vue component. */
function applySeedReducer(state, update) {
  switch (update.type) {
    case 'progress':
      return { ...state, progress: update.progress, processed_leads: update.processedLeads };
    case 'complete':
      return { ...state, status: 'completed', ...update.results };
    case 'error':
      return { ...state, status: 'failed', error_message: update.error };
    default:
      return state;
  }
}

/** Open a socket exactly like seed 001: io(url, { auth: { token } }), subscribe on connect. */
function seedClient(t, jobId, user, transport) {
  const socket = socketFor(gw, { auth: { token: token({ sub: user }) }, transport });
  t.after(() => socket.close());
  const statuses = collect(socket, 'job-status');
  const updates = collect(socket, 'job-update');
  const errors = collect(socket, 'error');
  const connectErrors = collect(socket, 'connect_error');
  socket.on('connect', () => {
    socket.emit('subscribe-job', jobId);
  });
  return { socket, statuses, updates, errors, connectErrors };
}

for (const transport of TRANSPORTS) {
  describe(`seed 001 client flow [${transport}]`, () => {
    it('subscribes on connect, gets a complete job-status, then progress, status, log and complete updates', async (t) => {
      const user = uniqueUser('seed');
      const jobId = await newJob(gw, user, 100);
      const c = seedClient(t, jobId, user, transport);

      const status = await c.statuses.waitFor((s) => s && s.jobId === jobId, 10_000).catch((e) => {
        throw new Error(`${e.message}; connect_errors: ${JSON.stringify(c.connectErrors.items.map((x) => x.message))}; errors: ${JSON.stringify(c.errors.items)}`);
      });
      await assertTransport(c.socket, transport);
      assertFreshJobStatus(status, jobId, 100);

      const events = [
        { type: 'status', status: 'processing', message: 'Job started' },
        { type: 'progress', progress: 45, processedLeads: 45, totalLeads: 100 },
        { type: 'log', log: { level: 'info', message: 'Processing lead 45 of 100' } },
        {
          type: 'complete',
          status: 'completed',
          results: { total_leads: 100, processed_leads: 100, enriched_leads: 40, high_score_leads: 12 },
        },
      ];
      for (const [i, ev] of events.entries()) {
        const accepted = await mustPost(gw, jobId, ev);
        assert.deepEqual(accepted, { jobId, seq: i + 1 }, `202 body of event #${i + 1}`);
      }

      const got = await c.updates.waitForCount(events.length, 5_000);
      assertSeqRange(got, 1, events.length);
      got.forEach((u, i) => assertUpdateMirrors(u, events[i], jobId, i + 1));

      // Nothing extra (no duplicates), no error event.
      await sleep(300);
      assert.equal(c.updates.length, events.length, `exactly ${events.length} job-update events: ${JSON.stringify(c.updates.items)}`);
      assert.deepEqual(c.errors.items, [], 'no error event');
      assert.equal(c.statuses.length, 1, 'exactly one job-status');

      // The seed's reducer arrives at the final state.
      const state = got.reduce(applySeedReducer, status);
      assert.equal(state.status, 'completed');
      assert.equal(state.progress, 45);
      assert.equal(state.processed_leads, 100);
      assert.equal(state.enriched_leads, 40);
      assert.equal(state.high_score_leads, 12);
    });

    it('a subscribe-job sent right on connect is never lost (25 clients connecting at once)', async (t) => {
      const user = uniqueUser('burst');
      const jobId = await newJob(gw, user, 100);
      const clients = Array.from({ length: 25 }, () => seedClient(t, jobId, user, transport));
      const results = await Promise.allSettled(clients.map((c) => c.statuses.waitFor((x) => x && x.jobId === jobId, 10_000)));
      const lost = results.filter((r) => r.status === 'rejected').length;
      assert.equal(lost, 0, `${lost} of 25 clients never got job-status for a subscribe-job emitted on connect`);
      await mustPost(gw, jobId, { type: 'progress', progress: 1, processedLeads: 1, totalLeads: 100 });
      await Promise.all(clients.map((c) => c.updates.waitForCount(1, 5_000)));
    });

    it('a second job gets an error update; the reducer shows it as failed', async (t) => {
      const user = uniqueUser('seed');
      const jobId = await newJob(gw, user, 10);
      const c = seedClient(t, jobId, user, transport);
      const status = await c.statuses.waitFor((s) => s && s.jobId === jobId, 10_000);
      assertFreshJobStatus(status, jobId, 10);

      const events = [
        { type: 'status', status: 'processing', message: 'Started' },
        { type: 'progress', progress: 30, processedLeads: 3, totalLeads: 10 },
        { type: 'error', status: 'failed', error: 'OSINT provider timed out' },
      ];
      for (const ev of events) await mustPost(gw, jobId, ev);
      const got = await c.updates.waitForCount(events.length, 5_000);
      assertSeqRange(got, 1, 3);
      got.forEach((u, i) => assertUpdateMirrors(u, events[i], jobId, i + 1));
      const state = got.reduce(applySeedReducer, status);
      assert.equal(state.status, 'failed');
      assert.equal(state.error_message, 'OSINT provider timed out');
      assert.deepEqual(c.errors.items, [], 'no error event');
    });
  });

  describe(`job-status reflects applied events [${transport}]`, () => {
    it('progress, status and logs (oldest first; a log without timestamp gets one)', async (t) => {
      const user = uniqueUser('snap');
      const jobId = await newJob(gw, user, 200);
      const given = '2024-05-06T07:08:09.123Z';
      const events = [
        { type: 'status', status: 'queued', message: 'Waiting for a worker' },
        { type: 'log', log: { level: 'debug', message: 'first', timestamp: given } },
        { type: 'status', status: 'processing', message: 'Picked up' },
        { type: 'log', log: { level: 'warn', message: 'second' } },
        { type: 'progress', progress: 25, processedLeads: 50, totalLeads: 200 },
        { type: 'log', log: { level: 'error', message: 'third' } },
      ];
      const before = Date.now();
      for (const ev of events) await mustPost(gw, jobId, ev);

      const socket = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => socket.close());
      const { status, statusBeforeAck } = await subscribe(socket, jobId);
      assert.ok(statusBeforeAck, 'job-status is emitted before the ack');
      assertJobStatusShape(status, jobId);
      assert.equal(status.seq, events.length, 'seq counts every applied event');
      assert.equal(status.status, 'processing');
      assert.equal(status.progress, 25);
      assert.equal(status.processed_leads, 50);
      assert.equal(status.total_leads, 200);
      assert.equal(status.error_message, null);
      assert.deepEqual(
        status.recentLogs.map((l) => [l.level, l.message]),
        [
          ['debug', 'first'],
          ['warn', 'second'],
          ['error', 'third'],
        ],
        'recentLogs hold the posted logs, oldest first',
      );
      assert.equal(Date.parse(status.recentLogs[0].timestamp), Date.parse(given), 'a given log timestamp is kept');
      for (const l of status.recentLogs.slice(1)) {
        const ts = Date.parse(l.timestamp);
        assert.ok(ts >= before - 60_000 && ts <= Date.now() + 60_000, `a generated log timestamp is "now", got ${l.timestamp}`);
      }
    });

    it('after complete: status completed, progress 100, counters from results', async (t) => {
      const user = uniqueUser('snap');
      const jobId = await newJob(gw, user, 100);
      await mustPost(gw, jobId, { type: 'progress', progress: 50, processedLeads: 50, totalLeads: 100 });
      const results = { total_leads: 120, processed_leads: 118, enriched_leads: 77, high_score_leads: 9, topLead: 'ACME GmbH' };
      await mustPost(gw, jobId, { type: 'complete', status: 'completed', results });

      const socket = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => socket.close());
      const { status } = await subscribe(socket, jobId);
      assertJobStatusShape(status, jobId);
      assert.equal(status.status, 'completed');
      assert.equal(status.progress, 100);
      assert.equal(status.total_leads, 120);
      assert.equal(status.processed_leads, 118);
      assert.equal(status.enriched_leads, 77);
      assert.equal(status.high_score_leads, 9);
      assert.equal(status.error_message, null);
      assert.equal(status.seq, 2);
    });

    it('after error: status failed, error_message is the error', async (t) => {
      const user = uniqueUser('snap');
      const jobId = await newJob(gw, user, 100);
      await mustPost(gw, jobId, { type: 'status', status: 'processing', message: 'go' });
      await mustPost(gw, jobId, { type: 'error', status: 'failed', error: 'Database connection lost' });

      const socket = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => socket.close());
      const { status } = await subscribe(socket, jobId);
      assertJobStatusShape(status, jobId);
      assert.equal(status.status, 'failed');
      assert.equal(status.error_message, 'Database connection lost');
      assert.equal(status.seq, 2);
    });

    it('a status event can cancel a job; a job created without total_leads is valid', async (t) => {
      const user = uniqueUser('snap');
      const r = await createJob(gw, { user_id: user });
      assert.equal(r.status, 201, `POST /api/v1/jobs without total_leads: ${JSON.stringify(r.body)}`);
      const jobId = r.body.jobId;
      await mustPost(gw, jobId, { type: 'status', status: 'cancelled', message: 'Cancelled by user' });
      const socket = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => socket.close());
      const { status } = await subscribe(socket, jobId);
      assertJobStatusShape(status, jobId);
      assert.equal(status.status, 'cancelled');
      assert.equal(status.seq, 1);
    });
  });
}
