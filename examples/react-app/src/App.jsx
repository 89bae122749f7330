import { useState } from 'react';
import { useJobUpdates } from './useJobUpdates.js';
import { jobView } from './jobView.js';

// The token and the job id come from the query string (?token=…&job=…) or
// from the form.
const query = new URLSearchParams(window.location.search);

export default function App() {
  const [job, setJob] = useState({ token: query.get('token') ?? '', jobId: query.get('job') ?? '' });

  function open(event) {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const next = { token: form.get('token').trim(), jobId: form.get('job').trim() };
    setJob(next);
    window.history.replaceState(null, '', `?${new URLSearchParams({ token: next.token, job: next.jobId })}`);
  }

  return (
    <main>
      <h1>leadgate job <small>React</small></h1>
      <form onSubmit={open}>
        <input name="token" placeholder="token (leadgate token --sub alice)" defaultValue={job.token} />
        <input name="job" placeholder="job id" defaultValue={job.jobId} />
        <button>Open</button>
      </form>
      {/* The hook keeps its state when its arguments change: a new job or token gets a new JobView. */}
      {job.token && job.jobId && <JobView key={`${job.jobId} ${job.token}`} jobId={job.jobId} token={job.token} />}
    </main>
  );
}

function JobView({ jobId, token }) {
  const { jobStatus, updates } = useJobUpdates(jobId, token);
  const view = jobView(jobStatus, updates);
  if (!view) return <p id="waiting">Connecting to job {jobId}…</p>;

  return (
    <section className="job">
      <p>
        Status <strong id="status" className={`status ${view.status}`}>{view.status}</strong>{' '}
        <span id="status-message">{view.message}</span>
      </p>
      <p>
        <progress id="progress" max="100" value={view.progress} /> <span id="progress-label">{view.progress} %</span>
      </p>
      <dl className="counters">
        <div><dt>Processed</dt><dd id="processed">{view.processed} / {view.total}</dd></div>
        <div><dt>Enriched</dt><dd id="enriched">{view.enriched}</dd></div>
        <div><dt>High score</dt><dd id="high-score">{view.highScore}</dd></div>
      </dl>
      {view.error && <p id="error" role="alert">Job failed: {view.error}</p>}
      <h2>Log</h2>
      <ol id="log">
        {view.logs.map((log, i) => (
          <li key={i} className={log.level}>
            <time>{log.timestamp && new Date(log.timestamp).toLocaleTimeString()}</time> [{log.level}] {log.message}
          </li>
        ))}
      </ol>
      {view.results && (
        <>
          <h2>Results</h2>
          <pre id="results">{JSON.stringify(view.results, null, 2)}</pre>
        </>
      )}
    </section>
  );
}
