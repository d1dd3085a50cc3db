-- Who holds a running job, and until when (Unix ms): several nodes can share one queue
-- (PostgreSQL), and a job whose node stopped renewing its lease is queued again
-- (src/store/work.rs). Rows from before have neither: a node queues those again at its start.
ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
CREATE INDEX jobs_lease ON jobs (state, lease_until);
