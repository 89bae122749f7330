// An event emitted from the client's `connect` callback is always served.
//
// The seed's React hook and Vue component subscribe exactly there. A server
// that acknowledges the connect before the socket's handlers exist (a
// socketioxide server that registers them in its connect handler, which
// runs in a task of its own) drops a few of these first events: seen 1 to 3
// in 3,000 WebSocket connections. Here thousands of stock clients each
// subscribe from `connect`, and every one must get its job-status and ack.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { startGateway, token, newJob, uniqueUser } from './lib/harness.mjs';

const CLIENTS = 3000;
const AT_ONCE = 200;

let gw;
before(async () => {
  gw = await startGateway({ env: { LEADGATE_MAX_CONNECTIONS_PER_USER: String(CLIENTS) } });
});
after(async () => {
  await gw?.stop();
});

/** Connects one client that subscribes from its connect callback; resolves
 *  with what it got: 'served', or why not. */
function subscribeOnConnect(url, tok, jobId, transports) {
  return new Promise((resolve) => {
    const socket = io(url, { forceNew: true, reconnection: false, transports, auth: { token: tok } });
    let status = false;
    const done = (outcome) => {
      clearTimeout(timer);
      socket.close();
      resolve(outcome);
    };
    const timer = setTimeout(() => done(status ? 'job-status but no ack' : 'nothing within 10 s'), 10_000);
    socket.on('job-status', (s) => {
      if (s.jobId === jobId) status = true;
    });
    socket.on('connect_error', (err) => done(`connect_error ${err.message}`));
    socket.on('connect', () => {
      // Exactly what the seed's hook does, with an ack to count on.
      socket.emit('subscribe-job', jobId, (ack) => {
        done(ack?.ok && status ? 'served' : `ack ${JSON.stringify(ack)}, job-status ${status}`);
      });
    });
  });
}

for (const [name, transports] of [
  ['websocket', ['websocket']],
  ['long-polling', ['polling']],
]) {
  describe(`the first event, emitted from connect [${name}]`, () => {
    it(`is served for each of ${CLIENTS} clients`, { timeout: 240_000 }, async () => {
      const user = uniqueUser('first');
      const tok = token({ sub: user });
      const jobId = await newJob(gw, user);
      const outcomes = new Map();
      let next = 0;
      async function lane() {
        while (next < CLIENTS) {
          next += 1;
          const outcome = await subscribeOnConnect(gw.url, tok, jobId, transports);
          outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
        }
      }
      await Promise.all(Array.from({ length: AT_ONCE }, lane));
      assert.deepEqual(Object.fromEntries(outcomes), { served: CLIENTS });
    });
  });
}
