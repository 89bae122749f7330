// Scenario 3: after unsubscribe-job no further job-update for that job
// reaches the socket, while other subscribers keep getting them.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS,
  startGateway,
  token,
  newJob,
  mustPost,
  connect,
  collect,
  subscribe,
  uniqueUser,
  expectSilence,
  sleep,
} from './lib/harness.mjs';
import { assertSeqRange } from './lib/asserts.mjs';

let gw;
before(async () => {
  gw = await startGateway();
});
after(async () => {
  await gw?.stop();
});

const log = (message) => ({ type: 'log', log: { level: 'info', message } });

for (const transport of TRANSPORTS) {
  describe(`unsubscribe-job [${transport}]`, () => {
    it('with ack: { ok: true }, then no more updates for that socket while another subscriber still gets them', async (t) => {
      const user = uniqueUser('unsub');
      const jobId = await newJob(gw, user);
      const tok = token({ sub: user });
      const leaver = await connect(gw, { token: tok, transport });
      const stayer = await connect(gw, { token: tok, transport });
      t.after(() => {
        leaver.close();
        stayer.close();
      });
      const ul = collect(leaver, 'job-update');
      const us = collect(stayer, 'job-update');
      const el = collect(leaver, 'error');
      await subscribe(leaver, jobId);
      await subscribe(stayer, jobId);

      await mustPost(gw, jobId, log('before'));
      await ul.waitForCount(1, 5_000);
      await us.waitForCount(1, 5_000);

      const ack = await leaver.timeout(5_000).emitWithAck('unsubscribe-job', jobId);
      assert.deepEqual(ack, { ok: true }, 'unsubscribe ack');

      for (let i = 1; i <= 5; i++) await mustPost(gw, jobId, log(`after-${i}`));
      await us.waitForCount(6, 5_000);
      await expectSilence(ul, () => true, 300);
      assert.equal(ul.length, 1, 'the unsubscribed socket got only the update from before');
      assertSeqRange(us.items, 1, 6, 'the still-subscribed socket');
      assert.deepEqual(el.items, [], 'no error event');
      assert.ok(leaver.connected, 'the unsubscribed socket stays connected');
    });

    it('without ack (as in seed 001): no more updates afterwards', async (t) => {
      const user = uniqueUser('unsub');
      const jobId = await newJob(gw, user);
      const tok = token({ sub: user });
      const leaver = await connect(gw, { token: tok, transport });
      const stayer = await connect(gw, { token: tok, transport });
      t.after(() => {
        leaver.close();
        stayer.close();
      });
      const ul = collect(leaver, 'job-update');
      const us = collect(stayer, 'job-update');
      await subscribe(leaver, jobId);
      await subscribe(stayer, jobId);

      leaver.emit('unsubscribe-job', jobId);
      // Packets of one socket are handled in order: once an ack for a later
      // request is back, the unsubscribe has been processed.
      const other = await newJob(gw, user);
      await subscribe(leaver, other);

      for (let i = 1; i <= 3; i++) await mustPost(gw, jobId, log(`after-${i}`));
      await mustPost(gw, other, log('other job'));
      await us.waitForCount(3, 5_000);
      await ul.waitForCount(1, 5_000); // the update of the other job proves the socket still works
      await sleep(300);
      assert.deepEqual(
        ul.items.map((u) => u.jobId),
        [other],
        `only the other job's update reaches the unsubscribed socket: ${JSON.stringify(ul.items)}`,
      );
    });

    it('unsubscribing one job keeps the other subscriptions of the same socket', async (t) => {
      const user = uniqueUser('unsub');
      const keep = await newJob(gw, user);
      const drop = await newJob(gw, user);
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      const u = collect(s, 'job-update');
      await subscribe(s, keep);
      await subscribe(s, drop);
      assert.deepEqual(await s.timeout(5_000).emitWithAck('unsubscribe-job', drop), { ok: true });
      await mustPost(gw, drop, log('dropped'));
      await mustPost(gw, keep, log('kept'));
      await u.waitForCount(1, 5_000);
      await sleep(300);
      assert.deepEqual(
        u.items.map((x) => [x.jobId, x.log?.message]),
        [[keep, 'kept']],
      );
    });

    it('unsubscribing a job that was never subscribed is harmless', async (t) => {
      const user = uniqueUser('unsub');
      const jobId = await newJob(gw, user);
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      const ack = await s.timeout(5_000).emitWithAck('unsubscribe-job', jobId);
      assert.ok(ack && typeof ack.ok === 'boolean', `unsubscribe ack has ok: ${JSON.stringify(ack)}`);
      const { status } = await subscribe(s, jobId);
      assert.equal(status.jobId, jobId, 'the socket still works');
    });

    it('a disconnected subscriber does not disturb the others', async (t) => {
      const user = uniqueUser('unsub');
      const jobId = await newJob(gw, user);
      const tok = token({ sub: user });
      const gone = await connect(gw, { token: tok, transport });
      const stayer = await connect(gw, { token: tok, transport });
      t.after(() => stayer.close());
      const us = collect(stayer, 'job-update');
      await subscribe(gone, jobId);
      await subscribe(stayer, jobId);
      gone.close();
      await sleep(200);
      for (let i = 1; i <= 3; i++) await mustPost(gw, jobId, log(`x-${i}`));
      await us.waitForCount(3, 5_000);
      assertSeqRange(us.items, 1, 3);
    });
  });
}
