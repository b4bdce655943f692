-- trailkeep SQLite schema v3: the distinct actions of each project, so an
-- action-prefix filter (`user.*`) becomes a few exact-action index scans
-- merged by seq instead of a range read sorted by seq.
CREATE TABLE event_actions (
    project_id  INTEGER NOT NULL,
    action      TEXT NOT NULL,
    PRIMARY KEY (project_id, action)
) WITHOUT ROWID;
INSERT OR IGNORE INTO event_actions (project_id, action) SELECT DISTINCT project_id, action FROM events;
