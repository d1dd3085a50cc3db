-- Analysis results and their delivery. Times are Unix epoch milliseconds (UTC).

-- What the worker recorded about each job: when it ran, how long each stage took, what it found.
ALTER TABLE jobs ADD COLUMN started_at INTEGER;
ALTER TABLE jobs ADD COLUMN finished_at INTEGER;
-- stable code of the failure (e.g. 'gantry_tilt', 'no-lungs', 'results'), beside the message
ALTER TABLE jobs ADD COLUMN error_code TEXT;
-- JSON object of stage durations in ms (load, resample, lung_mask, segmentation, detection,
-- classification, results, total)
ALTER TABLE jobs ADD COLUMN timings TEXT;
-- candidates the analysis produced, findings the report kept
ALTER TABLE jobs ADD COLUMN candidates INTEGER;
ALTER TABLE jobs ADD COLUMN findings INTEGER;
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;

-- Result objects written under storage/results/ (the latest version of each SOP instance).
CREATE TABLE results (
    sop_instance_uid TEXT   PRIMARY KEY,
    job             INTEGER NOT NULL REFERENCES jobs(id),
    study_uid       TEXT    NOT NULL,
    -- the analysed CT series
    series_uid      TEXT    NOT NULL,
    -- 'seg' or 'sr'
    kind            TEXT    NOT NULL,
    sop_class_uid   TEXT    NOT NULL,
    -- relative to the storage directory
    path            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX results_study ON results (study_uid);

-- One row per object to deliver to one destination.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    sop_instance_uid TEXT   NOT NULL,
    sop_class_uid   TEXT    NOT NULL,
    study_uid       TEXT    NOT NULL,
    series_uid      TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    job             INTEGER REFERENCES jobs(id),
    -- the calling AE that sent the CT, and where its results go
    source_ae       TEXT    NOT NULL,
    dest_ae         TEXT,
    dest_host       TEXT,
    dest_port       INTEGER,
    -- 'pending', 'sending', 'sent', 'failed' (permanent), 'superseded' (a newer version replaced it)
    state           TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    sent_at         INTEGER
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_study ON outbox (study_uid);

-- Every delivery attempt, successful or not.
CREATE TABLE send_attempts (
    id              INTEGER PRIMARY KEY,
    outbox          INTEGER NOT NULL REFERENCES outbox(id),
    at              INTEGER NOT NULL,
    duration_ms     INTEGER NOT NULL,
    -- DIMSE status when a C-STORE-RSP came back
    status          INTEGER,
    outcome         TEXT    NOT NULL,
    error           TEXT
);
CREATE INDEX send_attempts_outbox ON send_attempts (outbox);
