-- Portcullis store schema, portable between SQLite and PostgreSQL (plain types only).
-- Documents are JSON text; indexed columns repeat the fields that queries filter on.
CREATE TABLE store_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO store_meta (id, revision) VALUES (1, 0);

-- One committed mutation = one revision with one or more change entries (seq 0, 1, ...).
CREATE TABLE changes (
    revision BIGINT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    doc TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (revision, seq)
);

CREATE TABLE principals (
    key TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);

CREATE TABLE roles (
    name TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);

CREATE TABLE assignments (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    role TEXT NOT NULL,
    scope TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX assignments_by_principal ON assignments (principal);
CREATE INDEX assignments_by_role ON assignments (role);
CREATE INDEX assignments_by_scope ON assignments (scope);

CREATE TABLE entities (
    uid TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);

CREATE TABLE revoked_sessions (
    session_id TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    doc TEXT NOT NULL
);

CREATE TABLE template_links (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);

CREATE TABLE policy_sets (
    version BIGINT PRIMARY KEY,
    doc TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
