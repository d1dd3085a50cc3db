-- Index of everything the node received, and the jobs it queued.
-- Times are Unix epoch milliseconds (UTC). The files under storage/ are the data; these rows say
-- where they are and what they hold.

CREATE TABLE associations (
    id              INTEGER PRIMARY KEY,
    calling_ae      TEXT    NOT NULL,
    called_ae       TEXT    NOT NULL,
    peer_addr       TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,
    ended_at        INTEGER,
    -- 'open', then 'released', 'aborted_by_peer', 'aborted_by_us', 'connection_lost', 'timed_out'
    end_state       TEXT    NOT NULL DEFAULT 'open',
    end_reason      TEXT,
    instances_ok    INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0
);

-- Associations refused before they were established (allow-list, limits).
CREATE TABLE rejected_associations (
    id              INTEGER PRIMARY KEY,
    calling_ae      TEXT,
    called_ae       TEXT,
    peer_addr       TEXT    NOT NULL,
    at              INTEGER NOT NULL,
    reason          TEXT    NOT NULL
);

CREATE TABLE patients (
    id              INTEGER PRIMARY KEY,
    patient_id      TEXT    NOT NULL,
    issuer          TEXT    NOT NULL DEFAULT '',
    birth_date      TEXT,
    sex             TEXT,
    UNIQUE (patient_id, issuer)
);

CREATE TABLE studies (
    study_uid       TEXT    PRIMARY KEY,
    patient         INTEGER NOT NULL REFERENCES patients(id),
    study_date      TEXT,
    study_time      TEXT,
    accession_number TEXT,
    study_id        TEXT,
    description     TEXT,
    first_received_at INTEGER NOT NULL
);

CREATE TABLE series (
    series_uid      TEXT    PRIMARY KEY,
    study_uid       TEXT    NOT NULL REFERENCES studies(study_uid),
    modality        TEXT,
    series_number   INTEGER,
    description     TEXT,
    body_part       TEXT,
    frame_of_reference_uid TEXT,
    -- calling AE of the association that delivered the latest instance: where results go back
    source_ae       TEXT    NOT NULL,
    instance_count  INTEGER NOT NULL DEFAULT 0,
    first_received_at INTEGER NOT NULL,
    last_received_at  INTEGER NOT NULL,
    -- 'receiving' until stable_age passes without a new instance, then 'complete'
    state           TEXT    NOT NULL DEFAULT 'receiving',
    -- why the series cannot be analysed (volume stage refusal), stable code and operator message
    refusal_code    TEXT,
    refusal         TEXT,
    refused_at      INTEGER
);
CREATE INDEX series_state ON series (state, last_received_at);

CREATE TABLE instances (
    sop_instance_uid TEXT   PRIMARY KEY,
    series_uid      TEXT    NOT NULL REFERENCES series(series_uid),
    sop_class_uid   TEXT    NOT NULL,
    transfer_syntax TEXT    NOT NULL,
    instance_number INTEGER,
    rows            INTEGER,
    columns         INTEGER,
    number_of_frames INTEGER,
    -- path of the current version, relative to the storage directory
    path            TEXT    NOT NULL,
    size_bytes      INTEGER NOT NULL,
    version         INTEGER NOT NULL DEFAULT 1,
    received_at     INTEGER NOT NULL,
    association     INTEGER REFERENCES associations(id)
);
CREATE INDEX instances_series ON instances (series_uid);

-- Every different object received under an existing SOP Instance UID: each version is kept as
-- its own file; the instances row points at the newest.
CREATE TABLE instance_versions (
    sop_instance_uid TEXT   NOT NULL,
    version         INTEGER NOT NULL,
    path            TEXT    NOT NULL,
    received_at     INTEGER NOT NULL,
    association     INTEGER REFERENCES associations(id),
    PRIMARY KEY (sop_instance_uid, version)
);

-- C-STORE requests answered with a failure status, with the reason.
CREATE TABLE store_failures (
    id              INTEGER PRIMARY KEY,
    association     INTEGER REFERENCES associations(id),
    sop_instance_uid TEXT,
    sop_class_uid   TEXT,
    status          INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    at              INTEGER NOT NULL
);

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    series_uid      TEXT    NOT NULL REFERENCES series(series_uid),
    -- 'queued', 'running', 'done', 'failed'
    state           TEXT    NOT NULL DEFAULT 'queued',
    instance_count  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    error           TEXT
);
CREATE INDEX jobs_state ON jobs (state, created_at);

-- Small key/value state of the store. 'index_durable_until': every file created before this time
-- (Unix ms) is known to be in the index on disk; startup recovery re-indexes newer files.
CREATE TABLE store_state (
    key             TEXT    PRIMARY KEY,
    value           INTEGER NOT NULL
);
