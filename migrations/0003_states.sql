-- Job and outbox states are closed sets (src/store/state.rs: JobState, OutboxState). A row with
-- any other state is refused. SQLite cannot add a CHECK constraint to an existing table without
-- rebuilding it (and the tables that reference it); these triggers give the same guarantee.

CREATE TRIGGER jobs_state_on_insert BEFORE INSERT ON jobs
WHEN NEW.state NOT IN ('queued', 'running', 'done', 'failed')
BEGIN
    SELECT RAISE(ABORT, 'invalid job state');
END;

CREATE TRIGGER jobs_state_on_update BEFORE UPDATE OF state ON jobs
WHEN NEW.state NOT IN ('queued', 'running', 'done', 'failed')
BEGIN
    SELECT RAISE(ABORT, 'invalid job state');
END;

CREATE TRIGGER outbox_state_on_insert BEFORE INSERT ON outbox
WHEN NEW.state NOT IN ('pending', 'sent', 'failed', 'superseded')
BEGIN
    SELECT RAISE(ABORT, 'invalid outbox state');
END;

CREATE TRIGGER outbox_state_on_update BEFORE UPDATE OF state ON outbox
WHEN NEW.state NOT IN ('pending', 'sent', 'failed', 'superseded')
BEGIN
    SELECT RAISE(ABORT, 'invalid outbox state');
END;
