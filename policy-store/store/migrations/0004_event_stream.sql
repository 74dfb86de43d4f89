-- The live event stream (`GET /v1/events/stream`, issue 18): one entry per event taken
-- (duplicates excepted) or kept as a dead letter, written in the same transaction.
-- `event_seq` numbers them under the store's write lock, so entries appear without gaps
-- and in commit order: a console resuming after entry N misses nothing.
ALTER TABLE store_meta ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;

CREATE TABLE event_stream (
    seq BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    at BIGINT NOT NULL
);
