-- trailkeep PostgreSQL schema v1. See docs/design.md, "Schema (PostgreSQL)",
-- and ARCHITECTURE.md, "Scale-out plan", for what sharding by tenant needs.
CREATE TABLE projects (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          BIGSERIAL PRIMARY KEY,
    project_id  BIGINT NOT NULL REFERENCES projects(id),
    key_hash    BYTEA NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- The tenant head row is locked FOR UPDATE by every batch that appends to
-- the tenant, which serializes index assignment across nodes.
CREATE TABLE tenants (
    id          BIGSERIAL PRIMARY KEY,
    project_id  BIGINT NOT NULL REFERENCES projects(id),
    name        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    root        BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

-- The primary key leads with the tenant, and no unique constraint lacks
-- it, so the table can be distributed by tenant_id. seq (commit order,
-- from a sequence) and id (UUIDv7, made by the server) are unique by
-- construction and only indexed.
CREATE TABLE events (
    seq          BIGSERIAL NOT NULL,
    id           UUID NOT NULL,
    project_id   BIGINT NOT NULL,
    tenant_id    BIGINT NOT NULL,
    idx          BIGINT NOT NULL,
    occurred_at  BIGINT NOT NULL,
    action       TEXT NOT NULL,
    actor_id     TEXT NOT NULL,
    result       TEXT,
    leaf         BYTEA NOT NULL,
    search       TSVECTOR NOT NULL,
    PRIMARY KEY (tenant_id, idx)
);
CREATE INDEX events_by_id ON events (id);
CREATE INDEX events_by_project ON events (project_id, seq);
CREATE INDEX events_by_actor ON events (project_id, actor_id, seq);
CREATE INDEX events_by_action ON events (project_id, action text_pattern_ops, seq);
CREATE INDEX events_by_time ON events (project_id, occurred_at);
CREATE INDEX events_search ON events USING GIN (search);

CREATE TABLE event_tags (
    project_id  BIGINT NOT NULL,
    tag         TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (project_id, tag, seq)
);

CREATE TABLE event_targets (
    project_id  BIGINT NOT NULL,
    target_id   TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (project_id, target_id, seq)
);

CREATE TABLE tree_nodes (
    tenant_id  BIGINT NOT NULL,
    level      SMALLINT NOT NULL,
    idx        BIGINT NOT NULL,
    hash       BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, level, idx)
);

CREATE TABLE idempotency (
    project_id    BIGINT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  BYTEA NOT NULL,
    status        INTEGER NOT NULL,
    response      BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (project_id, key)
);

CREATE TABLE webhooks (
    id           BIGSERIAL PRIMARY KEY,
    project_id   BIGINT NOT NULL REFERENCES projects(id),
    url          TEXT NOT NULL,
    description  TEXT,
    secret       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    deleted_at   BIGINT
);

CREATE TABLE webhook_outbox (
    id               BIGSERIAL PRIMARY KEY,
    webhook_id       BIGINT NOT NULL REFERENCES webhooks(id),
    msg_id           TEXT NOT NULL,
    payload          BYTEA NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    last_status      INTEGER,
    last_error       TEXT,
    delivered_at     BIGINT,
    failed_at        BIGINT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- Shared settings of all nodes: the log signing key lives here unless it
-- is given by configuration.
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
