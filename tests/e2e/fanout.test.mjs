// Scenario 2: fan-out and the per-socket ordering guarantees of job-update
// (in seq order, none with seq <= the job-status seq, none twice, none lost).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS,
  startGateway,
  token,
  newJob,
  postEvent,
  mustPost,
  connect,
  collect,
  subscribe,
  uniqueUser,
  sleep,
} from './lib/harness.mjs';
import { assertSeqRange, assertUpdateMirrors } from './lib/asserts.mjs';

let gw;
before(async () => {
  gw = await startGateway();
});
after(async () => {
  await gw?.stop();
});

const progressEvent = (i, total) => ({ type: 'progress', progress: Math.floor((i * 100) / total), processedLeads: i, totalLeads: total });

for (const transport of TRANSPORTS) {
  describe(`fan-out [${transport}]`, () => {
    it('two subscribers of one job each get 50 concurrently posted updates exactly once, seq 1..50 in order', async (t) => {
      const N = 50;
      const user = uniqueUser('fan');
      const jobId = await newJob(gw, user, N);
      const tok = token({ sub: user });
      const a = await connect(gw, { token: tok, transport });
      const b = await connect(gw, { token: tok, transport });
      t.after(() => {
        a.close();
        b.close();
      });
      const ua = collect(a, 'job-update');
      const ub = collect(b, 'job-update');
      const sa = await subscribe(a, jobId);
      const sb = await subscribe(b, jobId);
      assert.equal(sa.status.seq, 0);
      assert.equal(sb.status.seq, 0);

      // Post all events at once: the gateway assigns the seqs.
      const events = Array.from({ length: N }, (_, i) => progressEvent(i + 1, N));
      const answers = await Promise.all(events.map((ev) => postEvent(gw, jobId, ev)));
      for (const r of answers) assert.equal(r.status, 202, `every event is accepted: ${JSON.stringify(r.body)}`);
      const seqs = answers.map((r) => r.body.seq).sort((x, y) => x - y);
      assert.deepEqual(seqs, Array.from({ length: N }, (_, i) => i + 1), 'the 202 seqs are exactly 1..N');
      const eventBySeq = new Map(answers.map((r, i) => [r.body.seq, events[i]]));

      const [ga, gb] = await Promise.all([ua.waitForCount(N, 10_000), ub.waitForCount(N, 10_000)]);
      await sleep(300); // let duplicates, if any, arrive
      assertSeqRange(ua.items, 1, N, 'socket A seqs');
      assertSeqRange(ub.items, 1, N, 'socket B seqs');
      for (const u of [...ga, ...gb]) assertUpdateMirrors(u, eventBySeq.get(u.seq), jobId, u.seq);
    });

    it('updates of other jobs do not reach a subscriber; two jobs on one socket stay separate', async (t) => {
      const user = uniqueUser('fan');
      const job1 = await newJob(gw, user);
      const job2 = await newJob(gw, user);
      const job3 = await newJob(gw, user); // never subscribed
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      const u = collect(s, 'job-update');
      await subscribe(s, job1);
      await subscribe(s, job2);
      for (let i = 1; i <= 3; i++) {
        await mustPost(gw, job1, { type: 'log', log: { level: 'info', message: `j1-${i}` } });
        await mustPost(gw, job2, { type: 'log', log: { level: 'info', message: `j2-${i}` } });
        await mustPost(gw, job3, { type: 'log', log: { level: 'info', message: `j3-${i}` } });
      }
      await u.waitForCount(6, 5_000);
      await sleep(300);
      assert.ok(!u.items.some((x) => x.jobId === job3), 'no update of an unsubscribed job');
      const of = (id) => u.items.filter((x) => x.jobId === id);
      assertSeqRange(of(job1), 1, 3, 'job 1 seqs');
      assertSeqRange(of(job2), 1, 3, 'job 2 seqs');
      assert.deepEqual(of(job1).map((x) => x.log.message), ['j1-1', 'j1-2', 'j1-3']);
      assert.deepEqual(of(job2).map((x) => x.log.message), ['j2-1', 'j2-2', 'j2-3']);
    });

    it('events applied before subscribing are not replayed as updates: only seq > job-status.seq', async (t) => {
      const user = uniqueUser('fan');
      const jobId = await newJob(gw, user);
      for (let i = 1; i <= 5; i++) await mustPost(gw, jobId, progressEvent(i, 100));
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      const u = collect(s, 'job-update');
      const { status } = await subscribe(s, jobId);
      assert.equal(status.seq, 5);
      assert.equal(status.progress, 5);
      for (let i = 6; i <= 8; i++) await mustPost(gw, jobId, progressEvent(i, 100));
      await u.waitForCount(3, 5_000);
      await sleep(300);
      assertSeqRange(u.items, 6, 8);
    });

    it('subscribing while events are being posted: updates continue exactly after the job-status seq, no gap, no duplicate', async (t) => {
      const N = 60;
      const user = uniqueUser('race');
      const jobId = await newJob(gw, user, N);
      const tok = token({ sub: user });
      const s1 = await connect(gw, { token: tok, transport });
      const s2 = await connect(gw, { token: tok, transport });
      t.after(() => {
        s1.close();
        s2.close();
      });
      const u1 = collect(s1, 'job-update');
      const u2 = collect(s2, 'job-update');

      // A worker posting one event after the other …
      const poster = (async () => {
        for (let i = 1; i <= N; i++) {
          const r = await postEvent(gw, jobId, progressEvent(i, N));
          assert.equal(r.status, 202);
        }
      })();
      // … while the clients subscribe at different moments.
      await sleep(30);
      const r1 = await subscribe(s1, jobId);
      await sleep(60);
      const r2 = await subscribe(s2, jobId);
      await poster;

      for (const [name, r, u] of [
        ['socket 1', r1, u1],
        ['socket 2', r2, u2],
      ]) {
        const expected = N - r.status.seq;
        await u.waitForCount(expected, 10_000, (x) => x.jobId === jobId);
        await sleep(200);
        assertSeqRange(u.items, r.status.seq + 1, N, `${name} (job-status seq ${r.status.seq})`);
        // The snapshot is consistent with its seq: progress event #seq was applied.
        if (r.status.seq > 0) assert.equal(r.status.processed_leads, r.status.seq, `${name}: job-status counters match its seq`);
      }
    });

    it('subscribing twice without unsubscribing: a fresh job-status each time, still each update once', async (t) => {
      const user = uniqueUser('dup');
      const jobId = await newJob(gw, user);
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      const u = collect(s, 'job-update');
      const first = await subscribe(s, jobId);
      await mustPost(gw, jobId, progressEvent(1, 100));
      await u.waitForCount(1, 5_000);
      const second = await subscribe(s, jobId);
      assert.equal(first.status.seq, 0);
      assert.equal(second.status.seq, 1, 're-subscribe sends a fresh job-status');
      await mustPost(gw, jobId, progressEvent(2, 100));
      await mustPost(gw, jobId, progressEvent(3, 100));
      await u.waitForCount(3, 5_000);
      await sleep(300);
      assertSeqRange(u.items, 1, 3);
    });

    it('re-subscribing after unsubscribe sends a job-status whose seq reflects events applied meanwhile', async (t) => {
      const user = uniqueUser('resub');
      const jobId = await newJob(gw, user, 100);
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      const u = collect(s, 'job-update');
      const first = await subscribe(s, jobId);
      assert.equal(first.status.seq, 0);
      await mustPost(gw, jobId, progressEvent(10, 100));
      await u.waitForCount(1, 5_000);

      const ack = await s.timeout(5_000).emitWithAck('unsubscribe-job', jobId);
      assert.deepEqual(ack, { ok: true });
      for (let i = 11; i <= 13; i++) await mustPost(gw, jobId, progressEvent(i, 100));
      await mustPost(gw, jobId, { type: 'log', log: { level: 'info', message: 'while away' } });
      await sleep(300);
      assert.equal(u.length, 1, `no update while unsubscribed: ${JSON.stringify(u.items)}`);

      const again = await subscribe(s, jobId);
      assert.equal(again.status.seq, 5, 'job-status seq counts the events applied meanwhile');
      assert.equal(again.status.processed_leads, 13);
      assert.equal(again.status.progress, 13);
      assert.equal(again.status.recentLogs.at(-1)?.message, 'while away');
      await mustPost(gw, jobId, progressEvent(14, 100));
      await u.waitForCount(2, 5_000);
      await sleep(300);
      assert.deepEqual(
        u.items.map((x) => x.seq),
        [1, 6],
        'after re-subscribing only updates newer than the fresh job-status',
      );
    });
  });
}
