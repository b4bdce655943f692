-- trailkeep PostgreSQL schema v2: rate-limit state shared by every node
-- (GCRA: one theoretical arrival time per credential, in microseconds).
CREATE TABLE rate_limits (
    credential  TEXT PRIMARY KEY,
    tat         BIGINT NOT NULL
);
