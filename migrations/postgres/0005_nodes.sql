-- PostgreSQL twin of migrations/0005_nodes.sql.
ALTER TABLE associations ADD COLUMN node TEXT;
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN lease_until BIGINT;
