-- Lifecycle events (issue 18): what was applied, what each principal or entity last
-- heard, and what could not be applied.

-- Every event taken (applied, acknowledged without effect, or found stale), by id: the
-- same id again is a duplicate and changes nothing.
CREATE TABLE events_taken (
    event_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    event_type TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    taken_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    revision BIGINT
);

-- The newest event applied to each principal or entity (`User::"u1"`): an older one that
-- arrives later (queues reorder) does not overwrite what it said.
CREATE TABLE event_subjects (
    subject TEXT PRIMARY KEY,
    occurred_at BIGINT NOT NULL,
    event_id TEXT NOT NULL
);

-- Events that could not be applied, kept whole with the reason, until replayed.
CREATE TABLE dead_letters (
    id TEXT PRIMARY KEY,
    event_id TEXT,
    source TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    reason TEXT NOT NULL,
    body TEXT NOT NULL,
    replayed_at BIGINT
);
CREATE INDEX dead_letters_by_time ON dead_letters (received_at, id);
