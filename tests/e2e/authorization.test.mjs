// Scenario 4: a user sees only their own jobs; another user's job and a job
// that does not exist get the same answer; admins see every job.
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
  uuid,
  sleep,
} from './lib/harness.mjs';
import { assertJobStatusShape, assertSeqRange } from './lib/asserts.mjs';

let gw;
before(async () => {
  gw = await startGateway();
});
after(async () => {
  await gw?.stop();
});

/** subscribe-job with an ack; resolves { ack, errors, statuses } after a settle time. */
async function trySubscribe(socket, jobId) {
  const errors = collect(socket, 'error');
  const statuses = collect(socket, 'job-status');
  try {
    const ack = await socket.timeout(5_000).emitWithAck('subscribe-job', jobId);
    await sleep(200);
    return { ack, errors: [...errors.items], statuses: [...statuses.items] };
  } finally {
    errors.stop();
    statuses.stop();
  }
}

for (const transport of TRANSPORTS) {
  describe(`authorization [${transport}]`, () => {
    it("another user's job and a nonexistent job get the identical 'job not found' answer", async (t) => {
      const alice = uniqueUser('alice');
      const bob = uniqueUser('bob');
      const aliceJob = await newJob(gw, alice);
      const b = await connect(gw, { token: token({ sub: bob }), transport });
      t.after(() => b.close());
      const updates = collect(b, 'job-update');

      const foreign = await trySubscribe(b, aliceJob);
      const missing = await trySubscribe(b, uuid());

      for (const [name, r] of [
        ["another user's job", foreign],
        ['a nonexistent job', missing],
      ]) {
        assert.equal(r.ack?.ok, false, `${name}: ack ok:false, got ${JSON.stringify(r.ack)}`);
        assert.match(String(r.ack.error), /job not found/i, `${name}: ack error`);
        assert.equal(r.errors.length, 1, `${name}: exactly one error event, got ${JSON.stringify(r.errors)}`);
        assert.match(String(r.errors[0]?.message), /job not found/i, `${name}: error event { message }`);
        assert.deepEqual(r.statuses, [], `${name}: no job-status`);
      }
      assert.deepEqual(foreign.ack, missing.ack, 'identical ack for a foreign and a nonexistent job');
      assert.deepEqual(foreign.errors, missing.errors, 'identical error event for a foreign and a nonexistent job');

      // The refused subscription leaks no updates either.
      await mustPost(gw, aliceJob, { type: 'log', log: { level: 'info', message: 'secret' } });
      await sleep(300);
      assert.deepEqual(updates.items, [], "no job-update of another user's job");
      assert.ok(b.connected, 'the socket stays connected after a refusal');
    });

    it('the refusal without an ack callback is an error event with the same message', async (t) => {
      const alice = uniqueUser('alice');
      const bob = uniqueUser('bob');
      const aliceJob = await newJob(gw, alice);
      const b = await connect(gw, { token: token({ sub: bob }), transport });
      t.after(() => b.close());
      const errors = collect(b, 'error');
      const statuses = collect(b, 'job-status');
      b.emit('subscribe-job', aliceJob);
      b.emit('subscribe-job', uuid());
      await errors.waitForCount(2, 5_000);
      await sleep(200);
      assert.deepEqual(errors.items[0], errors.items[1], 'identical error events');
      assert.match(String(errors.items[0].message), /job not found/i);
      assert.deepEqual(statuses.items, []);
    });

    it('the owner can subscribe to the job (control case)', async (t) => {
      const alice = uniqueUser('alice');
      const aliceJob = await newJob(gw, alice);
      const a = await connect(gw, { token: token({ sub: alice }), transport });
      t.after(() => a.close());
      const { status, ack } = await subscribe(a, aliceJob);
      assert.deepEqual(ack, { ok: true });
      assertJobStatusShape(status, aliceJob);
    });

    it('a token with roles ["admin"] may subscribe to any job and gets its updates', async (t) => {
      const alice = uniqueUser('alice');
      const aliceJob = await newJob(gw, alice, 100);
      await mustPost(gw, aliceJob, { type: 'progress', progress: 10, processedLeads: 10, totalLeads: 100 });
      const admin = await connect(gw, { token: token({ sub: uniqueUser('root'), roles: ['admin'] }), transport });
      t.after(() => admin.close());
      const updates = collect(admin, 'job-update');
      const { status, ack } = await subscribe(admin, aliceJob);
      assert.deepEqual(ack, { ok: true });
      assertJobStatusShape(status, aliceJob);
      assert.equal(status.seq, 1);
      assert.equal(status.progress, 10);
      await mustPost(gw, aliceJob, { type: 'progress', progress: 20, processedLeads: 20, totalLeads: 100 });
      await updates.waitForCount(1, 5_000);
      assertSeqRange(updates.items, 2, 2);

      // An admin still gets "job not found" for a job that does not exist.
      const r = await trySubscribe(admin, uuid());
      assert.equal(r.ack?.ok, false);
      assert.match(String(r.ack.error), /job not found/i);
    });

    it('other roles do not grant access', async (t) => {
      const alice = uniqueUser('alice');
      const aliceJob = await newJob(gw, alice);
      const s = await connect(gw, { token: token({ sub: uniqueUser('eve'), roles: ['user', 'viewer', 'Admin '] }), transport });
      t.after(() => s.close());
      const r = await trySubscribe(s, aliceJob);
      assert.equal(r.ack?.ok, false, `ack: ${JSON.stringify(r.ack)}`);
      assert.match(String(r.ack.error), /job not found/i);
    });

    it('user ids are compared exactly (no prefix / case folding)', async (t) => {
      const alice = uniqueUser('alice');
      const aliceJob = await newJob(gw, alice);
      for (const sub of [alice.toUpperCase(), alice.slice(0, -1), `${alice} `]) {
        const s = await connect(gw, { token: token({ sub }), transport });
        t.after(() => s.close());
        const r = await trySubscribe(s, aliceJob);
        assert.equal(r.ack?.ok, false, `sub ${JSON.stringify(sub)} must not see ${alice}'s job: ${JSON.stringify(r.ack)}`);
      }
    });
  });
}
