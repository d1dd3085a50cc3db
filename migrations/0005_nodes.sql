-- Several nodes on one index (PostgreSQL). Each association is logged with the node serving it,
-- so a restarted node closes only its own dangling ones. An outbox row is claimed by one node's
-- sender for a lease it renews while it sends (src/store/work.rs), so that each result object
-- is sent by one node; a claim whose lease ran out (its node died) is free to claim again.
-- Rows from before have no node: the next start of any node treats them as its own.
ALTER TABLE associations ADD COLUMN node TEXT;
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN lease_until INTEGER;
