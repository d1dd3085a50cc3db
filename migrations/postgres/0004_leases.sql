-- PostgreSQL twin of migrations/0004_leases.sql.
ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
CREATE INDEX jobs_lease ON jobs (state, lease_until);
