// Apps still on socket.io-client 2.x (Engine.IO 3, served beside today's
// protocol): such clients have no `auth` option, so the token comes in the
// query. They connect, subscribe and receive updates on every transport,
// and a refused connection is told why.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import ioV2 from 'socket.io-client-v2';
import { startGateway, token, newJob, mustPost, uniqueUser, sleep } from './lib/harness.mjs';

let gw;
before(async () => {
  gw = await startGateway();
});
after(async () => {
  await gw?.stop();
});

const TRANSPORTS = {
  websocket: { transports: ['websocket'] },
  polling: { transports: ['polling'], upgrade: false },
  upgrade: {},
};

/** A v2 socket; resolves once connected, rejects with the server's refusal. */
function connectV2(url, options) {
  return connected(ioV2(url, { forceNew: true, reconnection: false, ...options }));
}

function connected(socket) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error('no connect within 10 s'));
    }, 10_000);
    socket.on('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    // socket.io-client 2 reports a refused namespace connect as `error`.
    socket.on('error', (err) => {
      clearTimeout(timer);
      socket.close();
      reject(Object.assign(new Error(typeof err === 'string' ? err : err?.message), { data: err }));
    });
    socket.on('connect_error', (err) => {
      clearTimeout(timer);
      socket.close();
      reject(err);
    });
  });
}

function ack(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ack for ${event}`)), 5_000);
    socket.emit(event, ...args, (answer) => {
      clearTimeout(timer);
      resolve(answer);
    });
  });
}

for (const [name, options] of Object.entries(TRANSPORTS)) {
  describe(`socket.io-client 2 [${name}]`, () => {
    it('connects with the token in the query, subscribes and gets every update in order', async () => {
      const user = uniqueUser('v2');
      const jobId = await newJob(gw, user);
      const socket = await connectV2(gw.url, { ...options, query: { token: token({ sub: user }) } });
      try {
        const statuses = [];
        const updates = [];
        socket.on('job-status', (s) => statuses.push(s));
        socket.on('job-update', (u) => updates.push(u));
        assert.deepEqual(await ack(socket, 'subscribe-job', jobId), { ok: true });
        assert.equal(statuses.length, 1, 'the job-status came before the ack');
        assert.equal(statuses[0].jobId, jobId);
        assert.equal(statuses[0].seq, 0);
        for (let step = 1; step <= 5; step++) {
          await mustPost(gw, jobId, { type: 'progress', progress: step * 10, processedLeads: step, totalLeads: 10 });
        }
        for (let i = 0; i < 100 && updates.length < 5; i++) await sleep(50);
        assert.deepEqual(
          updates.map((u) => u.seq),
          [1, 2, 3, 4, 5],
        );
        assert.equal(updates[4].progress, 50);
        if (name === 'upgrade') {
          assert.equal(socket.io.engine.transport.name, 'websocket', 'the client upgraded');
        }
      } finally {
        socket.close();
      }
    });

    it('is told why a connection is refused', async () => {
      await assert.rejects(connectV2(gw.url, { ...options, query: { token: 'garbage' } }), (err) => {
        assert.equal(err.message, 'invalid token: malformed');
        return true;
      });
      await assert.rejects(connectV2(gw.url, options), (err) => {
        assert.equal(err.message, 'authentication required: missing token');
        return true;
      });
    });

    it('reads leads on /leads, with the token given to the Manager', async () => {
      // A v2 namespace socket's own `query` goes into its connect packet,
      // which the server does not read: the Manager's goes into the URL of
      // the connection, where the token is looked for.
      const user = uniqueUser('v2leads');
      const manager = new ioV2.Manager(gw.url, { ...options, reconnection: false, query: { token: token({ sub: user }) } });
      const socket = await connected(manager.socket('/leads'));
      try {
        const init = await new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no leads_init')), 5_000);
          socket.on('leads_init', (page) => {
            clearTimeout(timer);
            resolve(page);
          });
          // The page comes first; a request made at once is answered after.
          socket.emit('get_leads', { page: 1 });
        });
        assert.equal(init.type, 'leads_init');
        assert.ok(Array.isArray(init.projects));
        assert.equal(init.pagination.page, 1);
      } finally {
        socket.close();
      }
    });
  });
}
