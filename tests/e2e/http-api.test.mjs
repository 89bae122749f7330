// Scenario 6 (HTTP side): the worker API — 201/202 answers, and the 400, 401,
// 404 and 409 errors with their JSON { error } reasons.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS,
  API_KEY_2,
  startGateway,
  token,
  request,
  createJob,
  newJob,
  postEvent,
  mustPost,
  connect,
  collect,
  subscribe,
  uniqueUser,
  uuid,
  sleep,
} from './lib/harness.mjs';
import { UUID_RE, assertSeqRange } from './lib/asserts.mjs';

let gw;
before(async () => {
  gw = await startGateway();
});
after(async () => {
  await gw?.stop();
});

/** An error answer: the status, a JSON { error: string } body, and the reason matches every pattern. */
function assertError(res, status, ...patterns) {
  assert.equal(res.status, status, `expected HTTP ${status}, got ${res.status} ${res.text}`);
  assert.ok(res.body && typeof res.body === 'object', `error body must be JSON, got ${JSON.stringify(res.text)}`);
  assert.equal(typeof res.body.error, 'string', `error body must be { error: "<reason>" }, got ${res.text}`);
  for (const p of patterns) assert.match(res.body.error, p, `reason ${JSON.stringify(res.body.error)} should match ${p}`);
  assert.match(res.headers.get('content-type') || '', /application\/json/, 'error content-type');
}

const progress = (n) => ({ type: 'progress', progress: n, processedLeads: n, totalLeads: 100 });

describe('health', () => {
  it('GET /healthz and GET /readyz answer 200 without an API key', async () => {
    const h = await request(gw, 'GET', '/healthz', { apiKey: null });
    assert.equal(h.status, 200, h.text);
    const r = await request(gw, 'GET', '/readyz', { apiKey: null });
    assert.equal(r.status, 200, r.text);
  });

  it('the old REST endpoint GET /api/v1/freelance/projects/ does not exist', async () => {
    const r = await request(gw, 'GET', '/api/v1/freelance/projects/', { apiKey: null });
    assert.equal(r.status, 404);
  });
});

describe('POST /api/v1/jobs', () => {
  it('201 { jobId: <uuid> }, a new id each time', async () => {
    const a = await createJob(gw, { user_id: uniqueUser('http'), total_leads: 100 });
    const b = await createJob(gw, { user_id: uniqueUser('http') });
    for (const r of [a, b]) {
      assert.equal(r.status, 201, r.text);
      assert.match(r.headers.get('content-type') || '', /application\/json/);
      assert.match(String(r.body?.jobId), UUID_RE, `jobId is a UUID: ${r.text}`);
    }
    assert.notEqual(a.body.jobId, b.body.jobId);
  });

  it('every key of LEADGATE_API_KEYS is accepted', async () => {
    const r = await createJob(gw, { user_id: uniqueUser('http') }, { apiKey: API_KEY_2 });
    assert.equal(r.status, 201, r.text);
  });

  it('401 for a missing, unknown or malformed API key', async () => {
    const body = { user_id: 'alice' };
    assertError(await request(gw, 'POST', '/api/v1/jobs', { body, apiKey: null }), 401);
    assertError(await request(gw, 'POST', '/api/v1/jobs', { body, apiKey: 'not-a-key' }), 401);
    assertError(await request(gw, 'POST', '/api/v1/jobs', { body, apiKey: '' }), 401);
    assertError(await request(gw, 'POST', '/api/v1/jobs', { body, apiKey: null, headers: { authorization: 'e2e-worker-key-0123456789abcdef' } }), 401);
    // a user's JWT is not an API key
    assertError(await request(gw, 'POST', '/api/v1/jobs', { body, apiKey: token({ sub: 'alice', roles: ['admin'] }) }), 401);
  });

  it('400 with the reason for invalid bodies', async () => {
    assertError(await request(gw, 'POST', '/api/v1/jobs', { rawBody: '{"user_id": "alice"' }), 400);
    assertError(await request(gw, 'POST', '/api/v1/jobs', { rawBody: 'not json' }), 400);
    assertError(await createJob(gw, {}, { body: {} }), 400, /missing field/i, /user_id/);
    assertError(await createJob(gw, {}, { body: { total_leads: 5 } }), 400, /missing field/i, /user_id/);
    assertError(await createJob(gw, {}, { body: { user_id: 'alice', bogus: 1 } }), 400, /unknown field/i, /bogus/);
    assertError(await createJob(gw, {}, { body: { user_id: 'alice', total_leads: 'many' } }), 400, /invalid type/i);
    assertError(await createJob(gw, {}, { body: { user_id: 42 } }), 400, /invalid type/i);
  });
});

describe('POST /api/v1/jobs/<jobId>/events', () => {
  it('202 { jobId, seq } with seq 1, 2, 3 … per job', async () => {
    const j1 = await newJob(gw, uniqueUser('http'));
    const j2 = await newJob(gw, uniqueUser('http'));
    for (let i = 1; i <= 3; i++) {
      const r = await postEvent(gw, j1, progress(i));
      assert.equal(r.status, 202, r.text);
      assert.deepEqual(r.body, { jobId: j1, seq: i });
    }
    const r = await postEvent(gw, j2, { type: 'status', status: 'queued', message: 'queued' });
    assert.deepEqual([r.status, r.body], [202, { jobId: j2, seq: 1 }], 'seq is per job');
  });

  it('accepts every event type and every status and log level of the contract', async () => {
    const jobId = await newJob(gw, uniqueUser('http'));
    const events = [
      ...['pending', 'queued', 'processing', 'completed', 'failed', 'cancelled'].map((status) => ({ type: 'status', status, message: `now ${status}` })),
      ...['debug', 'info', 'warn', 'error'].map((level) => ({ type: 'log', log: { level, message: `a ${level} line` } })),
      { type: 'log', log: { level: 'info', message: 'with timestamp', timestamp: new Date().toISOString() } },
      progress(50),
      { type: 'complete', status: 'completed', results: { anything: [1, 2, 3], nested: { ok: true } } },
      { type: 'error', status: 'failed', error: 'boom' },
    ];
    for (const [i, ev] of events.entries()) {
      const r = await postEvent(gw, jobId, ev);
      assert.equal(r.status, 202, `${JSON.stringify(ev)} → ${r.status} ${r.text}`);
      assert.equal(r.body.seq, i + 1);
    }
  });

  it('401 for a missing or unknown API key, checked before the job is looked up', async () => {
    const jobId = await newJob(gw, uniqueUser('http'));
    assertError(await postEvent(gw, jobId, progress(1), { apiKey: null }), 401);
    assertError(await postEvent(gw, jobId, progress(1), { apiKey: 'wrong' }), 401);
    assertError(await postEvent(gw, uuid(), progress(1), { apiKey: 'wrong' }), 401);
    assertError(await postEvent(gw, uuid(), progress(1), { apiKey: null }), 401);
    // nothing was applied
    assert.deepEqual((await postEvent(gw, jobId, progress(1))).body, { jobId, seq: 1 });
  });

  it('404 "job not found" for an unknown job', async () => {
    assertError(await postEvent(gw, uuid(), progress(1)), 404, /job not found/i);
  });

  it('400 for a jobId that is not a UUID', async () => {
    assertError(await postEvent(gw, 'not-a-uuid', progress(1)), 400);
    assertError(await postEvent(gw, '12345', progress(1)), 400);
  });

  it('400 with the reason for invalid bodies; nothing is applied', async () => {
    const jobId = await newJob(gw, uniqueUser('http'));
    const cases = [
      ['not JSON', { rawBody: 'this is not json' }, []],
      ['truncated JSON', { rawBody: '{"type":"progress",' }, []],
      ['a JSON array', { event: [progress(1)] }, []],
      ['an unknown type', { event: { type: 'explode', progress: 1 } }, [/explode|unknown variant|type/i]],
      ['no type', { event: { progress: 1, processedLeads: 1, totalLeads: 2 } }, [/type/]],
      ['a missing field', { event: { type: 'progress', processedLeads: 1, totalLeads: 2 } }, [/missing field/i, /progress/]],
      ['a missing nested field', { event: { type: 'log', log: { message: 'no level' } } }, [/missing field/i, /level/]],
      ['an unknown extra field', { event: { type: 'status', status: 'queued', message: 'm', bogus: 1 } }, [/unknown field/i, /bogus/]],
      ['an unknown nested field', { event: { type: 'log', log: { level: 'info', message: 'm', color: 'red' } } }, [/unknown field/i, /color/]],
      ['a wrong type', { event: { type: 'progress', progress: 'fifty', processedLeads: 1, totalLeads: 2 } }, [/invalid type/i]],
      ['a wrong type of error', { event: { type: 'error', status: 'failed', error: 42 } }, [/invalid type/i]],
      ['a wrong type of seq', { event: { ...progress(1), seq: 'one' } }, [/invalid type|seq/i]],
      ['an unknown status value', { event: { type: 'status', status: 'exploded', message: 'm' } }, [/exploded|unknown variant|status/i]],
      ['an unknown log level', { event: { type: 'log', log: { level: 'verbose', message: 'm' } } }, [/verbose|unknown variant|level/i]],
    ];
    for (const [name, { rawBody, event }, patterns] of cases) {
      const r = await postEvent(gw, jobId, event, { rawBody });
      try {
        assertError(r, 400, ...patterns);
      } catch (err) {
        err.message = `${name}: ${err.message}`;
        throw err;
      }
    }
    const ok = await postEvent(gw, jobId, progress(1));
    assert.deepEqual([ok.status, ok.body], [202, { jobId, seq: 1 }], 'no rejected event consumed a seq');
  });

  it('409 when an explicit seq is not exactly the next one', async () => {
    const jobId = await newJob(gw, uniqueUser('http'));
    assertError(await postEvent(gw, jobId, { ...progress(1), seq: 2 }), 409);
    assertError(await postEvent(gw, jobId, { ...progress(1), seq: 10 }), 409);
    assert.deepEqual((await postEvent(gw, jobId, { ...progress(1), seq: 1 })).body, { jobId, seq: 1 });
    assertError(await postEvent(gw, jobId, { ...progress(1), seq: 1 }), 409, /seq/i);
    assertError(await postEvent(gw, jobId, { ...progress(1), seq: 3 }), 409);
    assert.deepEqual((await postEvent(gw, jobId, { ...progress(2), seq: 2 })).body, { jobId, seq: 2 });
    // without seq the gateway assigns the next one
    assert.deepEqual((await postEvent(gw, jobId, progress(3))).body, { jobId, seq: 3 });
    assert.deepEqual((await postEvent(gw, jobId, { ...progress(4), seq: 4 })).body, { jobId, seq: 4 });
  });

  it('400 for a seq that is not a positive integer (seqs start at 1)', async () => {
    const jobId = await newJob(gw, uniqueUser('http'));
    for (const seq of [0, -1, 1.5, '1']) {
      assertError(await postEvent(gw, jobId, { ...progress(1), seq }), 400, /seq must be a positive integer/);
    }
    // Nothing was applied: the first event still gets seq 1.
    assert.deepEqual((await postEvent(gw, jobId, { ...progress(1), seq: 1 })).body, { jobId, seq: 1 });
  });

  it('concurrent events with the same explicit seq: exactly one wins', async () => {
    const jobId = await newJob(gw, uniqueUser('http'));
    const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => postEvent(gw, jobId, { ...progress(i), seq: 1 })));
    const statuses = rs.map((r) => r.status).sort();
    assert.deepEqual(statuses, [202, ...Array(9).fill(409)], `one 202 and nine 409, got ${statuses}`);
  });

  for (const transport of TRANSPORTS) {
    it(`rejected events (400 / 409) never reach subscribers and do not change the job [${transport}]`, async (t) => {
      const user = uniqueUser('http');
      const jobId = await newJob(gw, user, 100);
      const s = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s.close());
      const updates = collect(s, 'job-update');
      await subscribe(s, jobId);
      await mustPost(gw, jobId, { ...progress(10), seq: 1 });
      assert.equal((await postEvent(gw, jobId, { ...progress(99), seq: 5 })).status, 409);
      assert.equal((await postEvent(gw, jobId, { ...progress(98), seq: 1 })).status, 409);
      assert.equal((await postEvent(gw, jobId, { type: 'progress', progress: 97 })).status, 400);
      await mustPost(gw, jobId, { ...progress(20), seq: 2 });
      await updates.waitForCount(2, 5_000);
      await sleep(300);
      assertSeqRange(updates.items, 1, 2);
      assert.deepEqual(updates.items.map((u) => u.progress), [10, 20]);

      const s2 = await connect(gw, { token: token({ sub: user }), transport });
      t.after(() => s2.close());
      const { status } = await subscribe(s2, jobId);
      assert.equal(status.seq, 2);
      assert.equal(status.progress, 20);
    });
  }
});
