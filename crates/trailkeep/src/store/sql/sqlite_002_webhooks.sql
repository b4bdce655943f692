-- trailkeep SQLite schema v2: notification webhooks and their durable outbox.
CREATE TABLE webhooks (
    id           INTEGER PRIMARY KEY,
    project_id   INTEGER NOT NULL REFERENCES projects(id),
    url          TEXT NOT NULL,
    description  TEXT,
    secret       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    deleted_at   INTEGER
);

-- One row per (event, webhook), inserted in the event's own transaction.
CREATE TABLE webhook_outbox (
    id               INTEGER PRIMARY KEY,
    webhook_id       INTEGER NOT NULL REFERENCES webhooks(id),
    msg_id           TEXT NOT NULL,
    payload          BLOB NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    last_status      INTEGER,
    last_error       TEXT,
    delivered_at     INTEGER,
    failed_at        INTEGER,
    created_at       INTEGER NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
