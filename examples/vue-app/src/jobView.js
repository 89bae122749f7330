// What the job view shows, from the hook's two values. The hook merges
// `progress` and `complete` updates into jobStatus; `status`, `log` and
// `error` updates are only in `updates`, so they are read from there.
// After a reconnect the hook subscribes again and gets a fresh job-status
// whose `seq` covers every update before it: only later updates count.
export function jobView(jobStatus, updates) {
  if (!jobStatus) return null;
  const fresh = updates.filter((u) => u.jobId === jobStatus.jobId && u.seq > (jobStatus.seq ?? 0));
  const last = (...types) => fresh.findLast((u) => types.includes(u.type));
  const change = last('status', 'complete', 'error');
  const status = change?.status ?? jobStatus.status;
  return {
    status,
    message: change?.message ?? null,
    progress: status === 'completed' ? 100 : (jobStatus.progress ?? 0),
    processed: jobStatus.processed_leads ?? 0,
    total: jobStatus.total_leads ?? 0,
    enriched: jobStatus.enriched_leads ?? 0,
    highScore: jobStatus.high_score_leads ?? 0,
    logs: [...(jobStatus.recentLogs ?? []), ...fresh.filter((u) => u.type === 'log').map((u) => u.log)],
    results: last('complete')?.results ?? jobStatus.results ?? null,
    error: last('error')?.error ?? jobStatus.error_message ?? null,
  };
}
