-- trailkeep SQLite schema v4: the acknowledgment writes only this append-only
-- table (and the tenant heads); a background fold moves its rows into
-- `events` and every secondary index in large transactions.
-- `nodes` holds the tree nodes this leaf completed, level 0 first (32 bytes
-- each); `tags` and `targets` are JSON arrays of strings, NULL when empty.
-- The leaf lives in `events_tail_leaves` so that listings, which scan the
-- unindexed tail, read small rows.
CREATE TABLE events_tail (
    seq          INTEGER PRIMARY KEY,
    id           BLOB NOT NULL,
    project_id   INTEGER NOT NULL,
    tenant_id    INTEGER NOT NULL,
    idx          INTEGER NOT NULL,
    occurred_at  INTEGER NOT NULL,
    action       TEXT NOT NULL,
    actor_id     TEXT NOT NULL,
    result       TEXT,
    nodes        BLOB NOT NULL,
    tags         TEXT,
    targets      TEXT
);

CREATE TABLE events_tail_leaves (
    seq   INTEGER PRIMARY KEY,
    leaf  BLOB NOT NULL
);
