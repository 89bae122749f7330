// The benchmark's reference peer: the Node.js Socket.IO server that leadgate
// replaces (seed 001), configured as one would run it in production, with
// leadgate's wire behaviour for namespace `/` so that one load generator can
// drive both.
//
//   DATABASE_URL=postgres://… REDIS_URL=redis://… JWT_SECRET=… node server.mjs

import { createServer } from 'node:http';
import { createAdapter } from '@socket.io/redis-adapter';
import jwt from 'jsonwebtoken';
import pg from 'pg';
import { createClient } from 'redis';
import { Server } from 'socket.io';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} must be set`);
    process.exit(2);
  }
  return value;
}

const PORT = Number(process.env.PORT ?? 3000);
const HOST = process.env.HOST ?? '127.0.0.1';
const DATABASE_URL = required('DATABASE_URL');
const REDIS_URL = required('REDIS_URL');
const REDIS_PREFIX = process.env.REDIS_PREFIX ?? 'leadgate:';
const JWT_SECRET = required('JWT_SECRET');

const JOB_NOT_FOUND = 'job not found';
const BAD_JOB_ID = 'jobId must be a UUID string';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// The counters are BIGINT, which pg hands out as strings to be safe beyond
// 2^53; no lead count gets near that, and clients expect numbers.
pg.types.setTypeParser(pg.types.builtins.INT8, Number);
const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 10 });
pool.on('error', (err) => console.error('idle PostgreSQL client failed:', err.message));

const pubClient = createClient({ url: REDIS_URL });
const subClient = pubClient.duplicate();
// Worker events get a connection of their own: the adapter's subscriber
// carries the inter-instance traffic.
const workerClient = pubClient.duplicate();
for (const client of [pubClient, subClient, workerClient]) {
  // Without a listener node-redis throws the error and the process dies;
  // with one it reconnects.
  client.on('error', (err) => console.error('Redis:', err.message));
}
await Promise.all([pubClient.connect(), subClient.connect(), workerClient.connect()]);

const httpServer = createServer();
const io = new Server(httpServer, {
  serveClient: false,
  maxHttpBufferSize: 64 * 1024,
  // The prefix keeps the adapter's channels apart from other deployments
  // (and benchmark runs) on the same Redis.
  adapter: createAdapter(pubClient, subClient, { key: `${REDIS_PREFIX}socket.io` }),
});

// Refusals carry the same messages as leadgate's, which clients show.
function refusal(err) {
  if (err instanceof jwt.TokenExpiredError) return 'invalid token: expired';
  if (err instanceof jwt.NotBeforeError) return 'invalid token: not valid yet';
  if (err.message === 'invalid signature') return 'invalid token: bad signature';
  if (err.message === 'invalid algorithm') return 'invalid token: algorithm not allowed';
  return 'invalid token: malformed';
}

io.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  if (typeof token !== 'string' || token === '') {
    return next(new Error('authentication required: missing token'));
  }
  let claims;
  try {
    claims = jwt.verify(token, JWT_SECRET, { algorithms: ['HS256'] });
  } catch (err) {
    return next(new Error(refusal(err)));
  }
  if (typeof claims.sub !== 'string' || claims.sub === '' || claims.exp === undefined) {
    return next(new Error('invalid token: claims must include sub and exp'));
  }
  const roles = Array.isArray(claims.roles) ? claims.roles : [];
  socket.data = { id: claims.sub, admin: roles.includes('admin') };
  next();
});

async function loadStatus(jobId) {
  const { rows } = await pool.query(
    `SELECT id, user_id, status, progress, total_leads, processed_leads, enriched_leads,
            high_score_leads, error_message, results, seq
       FROM jobs WHERE id = $1`,
    [jobId],
  );
  if (rows.length === 0) return null;
  const job = rows[0];
  // Bounded by the job's seq, so the log lines agree with the snapshot.
  const logs = await pool.query(
    `SELECT level, message, created_at FROM job_logs
      WHERE job_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 50`,
    [jobId, job.seq],
  );
  return { job, logs: logs.rows.reverse() };
}

io.on('connection', (socket) => {
  const reply = (ack, answer) => typeof ack === 'function' && ack(answer);
  const refuse = (ack, message) => {
    socket.emit('error', { message });
    reply(ack, { ok: false, error: message });
  };

  socket.on('subscribe-job', async (jobId, ack) => {
    if (typeof jobId !== 'string' || !UUID.test(jobId)) return refuse(ack, BAD_JOB_ID);
    // Rooms and payloads use the canonical lower-case form, as workers do.
    jobId = jobId.toLowerCase();
    let found;
    try {
      found = await loadStatus(jobId);
    } catch (err) {
      console.error(`loading job ${jobId} failed:`, err.message);
      return refuse(ack, 'could not load the job; try again');
    }
    // Another user's job gets the same answer as a missing one, so that job
    // ids cannot be probed.
    if (!found || (found.job.user_id !== socket.data.id && !socket.data.admin)) {
      return refuse(ack, JOB_NOT_FOUND);
    }
    if (socket.disconnected) return;
    const { job, logs } = found;
    socket.join(`job:${jobId}`);
    socket.emit('job-status', {
      jobId,
      status: job.status,
      progress: job.progress,
      total_leads: job.total_leads,
      processed_leads: job.processed_leads,
      enriched_leads: job.enriched_leads,
      high_score_leads: job.high_score_leads,
      error_message: job.error_message,
      results: job.results,
      recentLogs: logs.map((l) => ({
        level: l.level,
        message: l.message,
        timestamp: l.created_at.toISOString(),
      })),
      seq: job.seq,
    });
    reply(ack, { ok: true });
  });

  socket.on('unsubscribe-job', (jobId, ack) => {
    if (typeof jobId !== 'string' || !UUID.test(jobId)) return refuse(ack, BAD_JOB_ID);
    socket.leave(`job:${jobId.toLowerCase()}`);
    reply(ack, { ok: true });
  });
});

// A broken worker must not flood the log: one line per interval at most.
let dropped = 0;
let lastWarning = 0;
function drop(channel, reason) {
  dropped += 1;
  const now = Date.now();
  if (now - lastWarning >= 10_000) {
    lastWarning = now;
    console.warn(`dropped ${dropped} malformed worker message(s) so far; latest on ${channel}: ${reason}`);
  }
}

const jobChannel = `${REDIS_PREFIX}job:`;
await workerClient.pSubscribe(`${jobChannel}*`, (message, channel) => {
  let update;
  try {
    update = JSON.parse(message);
  } catch {
    return drop(channel, 'not JSON');
  }
  if (update === null || typeof update !== 'object' || Array.isArray(update) || typeof update.type !== 'string') {
    return drop(channel, 'not an object with a string type');
  }
  const jobId = channel.slice(jobChannel.length).toLowerCase();
  update.jobId ??= jobId;
  // Every instance receives every worker message itself, so each delivers
  // only to its own sockets; io.to() would also relay it through the adapter
  // and every subscriber would get it once per instance.
  io.local.to(`job:${jobId}`).emit('job-update', update);
});

httpServer.listen(PORT, HOST, () => console.log(`listening on http://${HOST}:${PORT}`));

let stopping = false;
async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: shutting down`);
  // Open connections must not hold the process past a supervisor's patience.
  setTimeout(() => process.exit(1), 5_000).unref();
  // io.close() disconnects the sockets, closes the adapter (which needs the
  // Redis clients still connected) and the HTTP server.
  await io.close();
  await Promise.allSettled([pubClient.quit(), subClient.quit(), workerClient.quit(), pool.end()]);
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
