-- trailkeep SQLite schema v5: acknowledged events wait in the journal
-- (`<db>.journal/`) and in memory instead of in `events_tail`; what a v4
-- tail still holds is folded here, then the tail tables go. `folded_seq`
-- is the highest seq whose event is in `events`; the journal is read above it.
INSERT INTO events (seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, result, leaf)
SELECT t.seq, t.id, t.project_id, t.tenant_id, t.idx, t.occurred_at, t.action, t.actor_id, t.result, l.leaf
FROM events_tail t JOIN events_tail_leaves l ON l.seq = t.seq ORDER BY t.seq;
INSERT OR IGNORE INTO event_actions (project_id, action)
SELECT DISTINCT project_id, action FROM events_tail;
INSERT OR IGNORE INTO event_tags (project_id, tag, seq)
SELECT t.project_id, j.value, t.seq FROM events_tail t, json_each(t.tags) j WHERE t.tags IS NOT NULL;
INSERT OR IGNORE INTO event_targets (project_id, target_id, seq)
SELECT t.project_id, j.value, t.seq FROM events_tail t, json_each(t.targets) j WHERE t.targets IS NOT NULL;
-- `nodes` holds the nodes each leaf completed, level 0 first, 32 bytes each.
WITH RECURSIVE levels(level) AS (SELECT 0 UNION ALL SELECT level + 1 FROM levels WHERE level < 63)
INSERT INTO tree_nodes (tenant_id, level, idx, hash)
SELECT t.tenant_id, levels.level, t.idx >> levels.level, substr(t.nodes, levels.level * 32 + 1, 32)
FROM events_tail t JOIN levels ON levels.level * 32 < length(t.nodes);
DROP TABLE events_tail_leaves;
DROP TABLE events_tail;
INSERT INTO meta (key, value) SELECT 'folded_seq', coalesce(max(seq), 0) FROM events;
