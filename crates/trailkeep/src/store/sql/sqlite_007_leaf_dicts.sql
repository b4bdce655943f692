-- trailkeep SQLite schema v7: zstd dictionaries for leaf compression. A
-- stored leaf is the leaf itself (it starts with `{`) or a zstd frame whose
-- header names one of these ids (the dictionary's own zstd id). Rows are
-- never deleted: every leaf written with a dictionary needs it to be read.
CREATE TABLE leaf_dicts (
    id          INTEGER PRIMARY KEY,
    dict        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
