-- trailkeep PostgreSQL schema v3: a listing with `since` or `until` is
-- ordered by (occurred_at DESC, seq DESC) and paged after an (occurred_at,
-- seq) pair, so the time index ends in seq: a page is one reverse range
-- scan that starts at the cursor and stops after the page. (SQLite's
-- events_by_time ends in the rowid, which is seq, so it needs no change.)
DROP INDEX events_by_time;
CREATE INDEX events_by_time ON events (project_id, occurred_at, seq);
