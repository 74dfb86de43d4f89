-- External audit events (issue 18): other services' audit events, appended to the ledger
-- as external records. The id of each one recorded, so a redelivered message is not
-- recorded twice.
CREATE TABLE external_audit_recorded (
    event_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    ledger_seq BIGINT NOT NULL
);
