-- trailkeep SQLite schema v1. See docs/design.md, "Schema".
CREATE TABLE projects (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    key_hash    BLOB NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE tenants (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id),
    name        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    root        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

-- seq is the commit order across the store: it only grows, so every
-- index that ends in seq is appended at its right edge.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,
    id           BLOB NOT NULL,
    project_id   INTEGER NOT NULL,
    tenant_id    INTEGER NOT NULL,
    idx          INTEGER NOT NULL,
    occurred_at  INTEGER NOT NULL,
    action       TEXT NOT NULL,
    actor_id     TEXT NOT NULL,
    result       TEXT,
    leaf         BLOB NOT NULL
);
CREATE UNIQUE INDEX events_by_id ON events (id);
CREATE UNIQUE INDEX events_by_tenant ON events (tenant_id, idx);
CREATE INDEX events_by_project ON events (project_id, seq);
CREATE INDEX events_by_actor ON events (project_id, actor_id, seq);
CREATE INDEX events_by_action ON events (project_id, action, seq);
CREATE INDEX events_by_time ON events (project_id, occurred_at);

CREATE TABLE event_tags (
    project_id  INTEGER NOT NULL,
    tag         TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (project_id, tag, seq)
) WITHOUT ROWID;

CREATE TABLE event_targets (
    project_id  INTEGER NOT NULL,
    target_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (project_id, target_id, seq)
) WITHOUT ROWID;

-- Complete-subtree hashes: (level, idx) covers leaves [idx << level, (idx + 1) << level).
CREATE TABLE tree_nodes (
    tenant_id  INTEGER NOT NULL,
    level      INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    hash       BLOB NOT NULL,
    PRIMARY KEY (tenant_id, level, idx)
) WITHOUT ROWID;

CREATE TABLE idempotency (
    project_id    INTEGER NOT NULL,
    key           TEXT NOT NULL,
    request_hash  BLOB NOT NULL,
    status        INTEGER NOT NULL,
    response      BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (project_id, key)
) WITHOUT ROWID;

-- Contentless full-text index; rowid = events.seq. Filled after commit by
-- the writer (see fts_watermark), never in the acknowledgment path.
-- Diacritics are kept (remove_diacritics 0) so that `q` means the same as
-- on PostgreSQL, whose 'simple' configuration does not unaccent.
CREATE VIRTUAL TABLE events_fts USING fts5 (body, content = '', tokenize = 'unicode61 remove_diacritics 0');

CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('fts_watermark', 0);
