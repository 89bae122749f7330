"""A job worker that reports its progress to every leadgate instance with
nothing but a PostgreSQL client and a Redis client.

    pip install -r examples/python-worker/requirements.txt
    DATABASE_URL=postgres://... REDIS_URL=redis://127.0.0.1:6379 \
        python3 examples/python-worker/worker.py --user alice [--leads 20] [--delay 0.2] [--fail] [--job ID]

For each event it does what the leadgate contract asks of a worker: apply
the event to the job's row (and log) in one transaction, taking the job's
next seq, then PUBLISH the job-update, with that seq, on
<prefix>job:<jobId>. It prints the job id first, so a browser can subscribe.
"""

import argparse
import json
import os
import time
import uuid
from datetime import datetime, timezone

import psycopg
import redis

PREFIX = os.environ.get("LEADGATE_REDIS_PREFIX", "leadgate:")

# Each event type's effect on the jobs row, after `seq = seq + 1`.
EFFECTS = {
    "progress": lambda e: (
        "progress = %s, processed_leads = %s, total_leads = %s",
        [e["progress"], e["processedLeads"], e["totalLeads"]],
    ),
    "status": lambda e: ("status = %s", [e["status"]]),
    "log": lambda e: ("", []),
    "complete": lambda e: (
        "status = 'completed', progress = 100, error_message = NULL, results = %s,"
        " processed_leads = COALESCE(%s, processed_leads),"
        " enriched_leads = COALESCE(%s, enriched_leads),"
        " high_score_leads = COALESCE(%s, high_score_leads)",
        [
            json.dumps(e["results"]),
            e["results"].get("processed_leads"),
            e["results"].get("enriched_leads"),
            e["results"].get("high_score_leads"),
        ],
    ),
    "error": lambda e: ("status = 'failed', error_message = %s", [e["error"]]),
}


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Reporter:
    def __init__(self, db, bus):
        self.db = db
        self.bus = bus

    def report(self, job_id, event):
        sets, params = EFFECTS[event["type"]](event)
        with self.db.transaction():
            row = self.db.execute(
                "UPDATE jobs SET seq = seq + 1, updated_at = now()"
                + (", " + sets if sets else "")
                + " WHERE id = %s RETURNING seq",
                [*params, job_id],
            ).fetchone()
            if row is None:
                raise LookupError(f"job {job_id} not found")
            seq = row[0]
            if event["type"] == "log":
                event["log"].setdefault("timestamp", now_iso())
                self.db.execute(
                    "INSERT INTO job_logs (job_id, seq, level, message, created_at)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [job_id, seq, event["log"]["level"], event["log"]["message"], event["log"]["timestamp"]],
                )
        # Published after the commit, so a gateway that reads the job on
        # receipt sees the event applied.
        self.bus.publish(f"{PREFIX}job:{job_id}", json.dumps({**event, "jobId": job_id, "seq": seq}))

    def create_job(self, user_id, total_leads):
        job_id = str(uuid.uuid4())
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO jobs (id, user_id, total_leads, created_at, updated_at)"
                " VALUES (%s, %s, %s, now(), now())",
                [job_id, user_id, total_leads],
            )
        return job_id


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", default="alice")
    parser.add_argument("--leads", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--job")
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args()

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as db:
        bus = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
        reporter = Reporter(db, bus)
        job_id = args.job or reporter.create_job(args.user, args.leads)
        print(job_id, flush=True)
        total = args.leads
        reporter.report(job_id, {"type": "status", "status": "processing", "message": "Scoring started"})
        high_score = 0
        for done in range(1, total + 1):
            time.sleep(args.delay)
            if done % 3 == 0:
                high_score += 1
            reporter.report(job_id, {"type": "log", "log": {"level": "info", "message": f"Scored lead {done} of {total}"}})
            reporter.report(job_id, {
                "type": "progress",
                "progress": round(done * 100 / total),
                "processedLeads": done,
                "totalLeads": total,
            })
            if args.fail and done == (total + 1) // 2:
                reporter.report(job_id, {"type": "error", "status": "failed", "error": "Enrichment provider unreachable"})
                return
        reporter.report(job_id, {
            "type": "complete",
            "status": "completed",
            "results": {"processed_leads": total, "enriched_leads": total, "high_score_leads": high_score},
        })


if __name__ == "__main__":
    main()
