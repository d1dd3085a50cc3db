-- PostgreSQL twin of migrations/0003_states.sql: job and outbox states are closed sets
-- (src/store/state.rs). PostgreSQL adds CHECK constraints to existing tables directly.

ALTER TABLE jobs ADD CONSTRAINT jobs_state_valid
    CHECK (state IN ('queued', 'running', 'done', 'failed'));
ALTER TABLE outbox ADD CONSTRAINT outbox_state_valid
    CHECK (state IN ('pending', 'sent', 'failed', 'superseded'));
