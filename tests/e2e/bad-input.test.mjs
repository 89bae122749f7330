// Scenario 6 (Socket.IO side): invalid subscribe-job / unsubscribe-job
// arguments get a clear error, and the connection stays usable.
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
  sleep,
} from './lib/harness.mjs';
import { assertJobStatusShape } from './lib/asserts.mjs';

let gw;
before(async () => {
  gw = await startGateway();
});
after(async () => {
  await gw?.stop();
});

const UUID_MSG = /uuid/i;

const badArgs = [
  ['a non-UUID string', ['not-a-uuid']],
  ['an almost-UUID string', ['123e4567-e89b-12d3-a456-42661417400']],
  ['an empty string', ['']],
  ['a number', [42]],
  ['an object', [{ jobId: '123e4567-e89b-12d3-a456-426614174000' }]],
  ['an array', [['123e4567-e89b-12d3-a456-426614174000']]],
  ['null', [null]],
  ['a boolean', [true]],
  ['no argument', []],
];

for (const transport of TRANSPORTS) {
  describe(`invalid subscribe-job arguments [${transport}]`, () => {
    for (const [name, args] of badArgs) {
      it(`${name}: ack { ok: false, error } and an error event, both about the UUID; the socket stays usable`, async (t) => {
        const user = uniqueUser('bad');
        const jobId = await newJob(gw, user);
        const s = await connect(gw, { token: token({ sub: user }), transport });
        t.after(() => s.close());
        const errors = collect(s, 'error');
        const statuses = collect(s, 'job-status');
        const disconnects = collect(s, 'disconnect');

        const ack = await s.timeout(5_000).emitWithAck('subscribe-job', ...args);
        assert.equal(ack?.ok, false, `ack must be { ok: false, error }, got ${JSON.stringify(ack)}`);
        assert.equal(typeof ack.error, 'string');
        assert.match(ack.error, UUID_MSG, `ack error names the problem: ${JSON.stringify(ack.error)}`);
        await errors.waitForCount(1, 5_000);
        assert.equal(typeof errors.items[0]?.message, 'string', `error event is { message }: ${JSON.stringify(errors.items[0])}`);
        assert.match(errors.items[0].message, UUID_MSG, 'error event message names the problem');
        assert.deepEqual(statuses.items, [], 'no job-status for an invalid request');

        // The connection is still usable.
        const { status } = await subscribe(s, jobId);
        assertJobStatusShape(status, jobId);
        const updates = collect(s, 'job-update');
        await mustPost(gw, jobId, { type: 'log', log: { level: 'info', message: 'still alive' } });
        await updates.waitForCount(1, 5_000);
        assert.deepEqual(disconnects.items, [], 'not disconnected');
        assert.equal(errors.length, 1, `exactly one error event: ${JSON.stringify(errors.items)}`);
      });
    }

    it('without an ack callback (as in seed 001): only the error event { message }', async (t) => {
      const user = uniqueUser('bad');
      const jobId = await newJob(gw, user);
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      const errors = collect(s, 'error');
      s.emit('subscribe-job', 'definitely-not-a-uuid');
      s.emit('subscribe-job', 12345);
      s.emit('subscribe-job');
      await errors.waitForCount(3, 5_000);
      for (const e of errors.items) assert.match(String(e?.message), UUID_MSG, JSON.stringify(e));
      const { status } = await subscribe(s, jobId);
      assertJobStatusShape(status, jobId);
    });

    it('a burst of invalid requests does not break the connection', async (t) => {
      const user = uniqueUser('bad');
      const jobId = await newJob(gw, user);
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      const errors = collect(s, 'error');
      for (let i = 0; i < 30; i++) s.emit('subscribe-job', i % 2 ? `junk-${i}` : { i });
      await errors.waitForCount(30, 10_000);
      const { status } = await subscribe(s, jobId);
      assertJobStatusShape(status, jobId);
      assert.ok(s.connected);
    });

    it('unsubscribe-job with invalid arguments answers ok:false (with ack) and keeps the connection', async (t) => {
      const user = uniqueUser('bad');
      const jobId = await newJob(gw, user);
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      for (const args of [['nope'], [7], [{}], []]) {
        const ack = await s.timeout(5_000).emitWithAck('unsubscribe-job', ...args);
        assert.equal(ack?.ok, false, `unsubscribe-job ${JSON.stringify(args)} ack: ${JSON.stringify(ack)}`);
        assert.equal(typeof ack.error, 'string');
      }
      s.emit('unsubscribe-job', 'nope');
      s.emit('unsubscribe-job');
      await sleep(100);
      const { status } = await subscribe(s, jobId);
      assertJobStatusShape(status, jobId);
    });

    it('unknown events are ignored without breaking the connection', async (t) => {
      const user = uniqueUser('bad');
      const jobId = await newJob(gw, user);
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      s.emit('no-such-event', { x: 1 });
      s.emit('job-update', { type: 'progress', progress: 100, jobId, seq: 99 });
      await sleep(200);
      const { status } = await subscribe(s, jobId);
      assertJobStatusShape(status, jobId);
      assert.equal(status.seq, 0, 'a client cannot inject job updates');
      assert.equal(status.progress, 0);
    });
  });
}
