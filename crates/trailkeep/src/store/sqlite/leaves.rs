//! How the SQLite store keeps leaves: each one compressed on its own with
//! zstd and a dictionary trained on the store's own leaves.
//!
//! Audit events repeat their keys and most values (actions, user agents,
//! tenants), which a dictionary captures and per-row compression without
//! one does not. A stored `events.leaf` is either the leaf itself, which
//! always starts with `{`, or a zstd frame (magic `28 B5 2F FD`) whose
//! header names its dictionary id and the leaf's exact length. Decoding
//! gives back the hashed bytes exactly; nothing is re-serialized.
//!
//! The dictionary is trained once, when [`TRAIN_AFTER`] events are folded,
//! from the newest of them, and kept in `leaf_dicts` forever: rows written
//! with it stay readable. Leaves folded before stay as they are.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rusqlite::{Connection, OptionalExtension, params};
use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

use super::super::StoreError;

/// Events folded before the first dictionary is trained from them.
pub(super) const TRAIN_AFTER: i64 = 4096;
/// Largest dictionary trained; about 40 leaves' worth of bytes.
const DICT_BYTES: usize = 32 * 1024;
/// zstd level: level 1 compresses a leaf in about 2–3 µs and level 3
/// gains only 2 % more on varied events (BENCHMARKS.md).
const LEVEL: i32 = 1;
/// First bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupted(format!("stored leaf: {what}"))
}

/// The dictionaries of one database, loaded on first use; decodes stored
/// leaves for every reader.
#[derive(Default)]
pub(crate) struct Leaves {
    dicts: RwLock<HashMap<u32, Arc<DDict<'static>>>>,
}

impl Leaves {
    /// The leaf bytes of a stored `leaf` value.
    ///
    /// # Errors
    /// When the value is neither a leaf nor a frame of a known dictionary,
    /// or the frame does not decompress to its recorded length.
    pub(crate) fn decode(&self, conn: &Connection, stored: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        if !stored.starts_with(&ZSTD_MAGIC) {
            return Ok(stored);
        }
        let id = zstd_safe::get_dict_id_from_frame(&stored)
            .ok_or_else(|| corrupt("a zstd frame without a dictionary id"))?
            .get();
        let len = zstd_safe::get_frame_content_size(&stored)
            .ok()
            .flatten()
            .ok_or_else(|| corrupt("a zstd frame without its length"))?;
        let dict = self.dict(conn, id)?;
        // The header is data read from disk: a damaged one must not make the
        // process abort on an impossible allocation.
        let mut out = Vec::new();
        out.try_reserve_exact(usize::try_from(len).map_err(corrupt)?)
            .map_err(|_| corrupt(format!("a recorded length of {len} bytes")))?;
        DCTX.with_borrow_mut(|dctx| dctx.decompress_using_ddict(&mut out, &stored, &dict))
            .map_err(|code| corrupt(zstd_safe::get_error_name(code)))?;
        if out.len() as u64 != len {
            return Err(corrupt("decompressed to the wrong length"));
        }
        Ok(out)
    }

    fn dict(&self, conn: &Connection, id: u32) -> Result<Arc<DDict<'static>>, StoreError> {
        if let Some(d) = self.dicts.read().expect("lock").get(&id) {
            return Ok(d.clone());
        }
        let bytes: Vec<u8> = conn
            .prepare_cached("SELECT dict FROM leaf_dicts WHERE id = ?1")?
            .query_row(params![i64::from(id)], |r| r.get(0))
            .optional()?
            .ok_or_else(|| corrupt(format!("dictionary {id} is missing")))?;
        let dict = Arc::new(DDict::try_create(&bytes).ok_or_else(|| corrupt("bad dictionary"))?);
        self.dicts.write().expect("lock").insert(id, dict.clone());
        Ok(dict)
    }
}

thread_local! {
    /// One decompression context per reading thread.
    static DCTX: std::cell::RefCell<DCtx<'static>> = std::cell::RefCell::new(DCtx::create());
}

/// Compresses leaves with the store's dictionary; owned by the fold.
pub(super) struct Packer {
    cdict: CDict<'static>,
    cctx: CCtx<'static>,
}

impl Packer {
    /// The packer of the newest dictionary in the database, if any.
    pub(super) fn load(conn: &Connection) -> Result<Option<Self>, StoreError> {
        let bytes: Option<Vec<u8>> = conn
            .query_row(
                "SELECT dict FROM leaf_dicts ORDER BY created_at DESC, id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        bytes.map(|b| Self::new(&b)).transpose()
    }

    fn new(dict: &[u8]) -> Result<Self, StoreError> {
        Ok(Self {
            cdict: CDict::try_create(dict, LEVEL).ok_or_else(|| corrupt("bad dictionary"))?,
            cctx: CCtx::try_create().ok_or_else(|| corrupt("no zstd context"))?,
        })
    }

    /// Trains a dictionary on the newest folded leaves and stores it, once
    /// [`TRAIN_AFTER`] events are folded. Run inside the fold's
    /// transaction, so the dictionary is durable before any row uses it.
    pub(super) fn train(conn: &Connection, now: i64) -> Result<Option<Self>, StoreError> {
        let samples: Vec<Vec<u8>> = conn
            .prepare("SELECT leaf FROM events ORDER BY seq DESC LIMIT ?1")?
            .query_map(params![TRAIN_AFTER], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if (samples.len() as i64) < TRAIN_AFTER {
            return Ok(None);
        }
        let samples: Vec<Vec<u8>> = samples
            .into_iter()
            .filter(|s| s.first() == Some(&b'{'))
            .collect();
        let dict = match zstd::dict::from_samples(&samples, DICT_BYTES) {
            Ok(d) => d,
            Err(e) => {
                // Too uniform or too small to learn from: keep leaves as they are.
                tracing::warn!(error = %e, "no leaf dictionary trained");
                return Ok(None);
            }
        };
        let Some(id) = zstd_safe::get_dict_id_from_dict(&dict) else {
            return Ok(None);
        };
        let taken: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM leaf_dicts WHERE id = ?1)",
            params![i64::from(id.get())],
            |r| r.get(0),
        )?;
        if taken {
            // A random id that collides with an older dictionary cannot name this one.
            return Ok(None);
        }
        conn.execute(
            "INSERT INTO leaf_dicts (id, dict, created_at) VALUES (?1, ?2, ?3)",
            params![i64::from(id.get()), dict, now],
        )?;
        Self::new(&dict).map(Some)
    }

    /// The stored form of `leaf`: compressed, or the leaf itself when
    /// compression would not make it smaller.
    pub(super) fn pack(&mut self, leaf: &[u8], out: &mut Vec<u8>) -> Result<(), StoreError> {
        out.clear();
        out.reserve(zstd_safe::compress_bound(leaf.len()));
        self.cctx
            .compress_using_cdict(out, leaf, &self.cdict)
            .map_err(|code| corrupt(zstd_safe::get_error_name(code)))?;
        if out.len() >= leaf.len() {
            out.clear();
            out.extend_from_slice(leaf);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: usize) -> Vec<u8> {
        format!(
            r#"{{"v":1,"id":"01a2094b-1483-70a1-ab3c-{i:012x}","tenant":"t{}","index":{i},"action":"user.login","actor":{{"id":"u{}","type":"user","name":"Ann {}"}},"context":{{"user_agent":"Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"}}}}"#,
            i % 7,
            i % 13,
            i % 101
        )
        .into_bytes()
    }

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate_sqlite(&mut conn).unwrap();
        conn
    }

    fn fill(conn: &Connection, n: usize) {
        for i in 0..n {
            conn.execute(
                "INSERT INTO events (seq, id, project_id, tenant_id, idx, occurred_at, action, actor_id, leaf, nodes) VALUES (?1, ?2, 1, 1, ?1, 0, 'a', 'u', ?3, x'')",
                params![i as i64 + 1, (i as u128).to_be_bytes().to_vec(), leaf(i)],
            )
            .unwrap();
        }
    }

    #[test]
    fn no_dictionary_is_trained_before_enough_events() {
        let conn = db();
        fill(&conn, TRAIN_AFTER as usize - 1);
        assert!(Packer::train(&conn, 0).unwrap().is_none());
        assert!(Packer::load(&conn).unwrap().is_none());
    }

    #[test]
    fn packed_leaves_decode_to_the_same_bytes() {
        let conn = db();
        fill(&conn, TRAIN_AFTER as usize);
        let mut packer = Packer::train(&conn, 0).unwrap().expect("trained");
        assert!(
            Packer::load(&conn).unwrap().is_some(),
            "the dictionary is stored"
        );
        let leaves = Leaves::default();
        let mut out = Vec::new();
        let (mut raw, mut packed) = (0, 0);
        for i in 5_000..5_200 {
            let l = leaf(i);
            packer.pack(&l, &mut out).unwrap();
            assert!(out.starts_with(&ZSTD_MAGIC), "compressed");
            raw += l.len();
            packed += out.len();
            assert_eq!(leaves.decode(&conn, out.clone()).unwrap(), l);
        }
        assert!(packed * 2 < raw, "{packed} of {raw} bytes");
        // Unpacked leaves pass through.
        assert_eq!(leaves.decode(&conn, leaf(1)).unwrap(), leaf(1));
        // A second store's reader finds the dictionary in the database.
        packer.pack(&leaf(9), &mut out).unwrap();
        assert_eq!(
            Leaves::default().decode(&conn, out.clone()).unwrap(),
            leaf(9)
        );
    }

    #[test]
    fn damaged_frames_are_corruption() {
        let conn = db();
        fill(&conn, TRAIN_AFTER as usize);
        let mut packer = Packer::train(&conn, 0).unwrap().unwrap();
        let mut out = Vec::new();
        packer.pack(&leaf(7), &mut out).unwrap();
        let leaves = Leaves::default();
        let mut cut = out.clone();
        cut.truncate(out.len() - 3);
        assert!(matches!(
            leaves.decode(&conn, cut),
            Err(StoreError::Corrupted(_))
        ));
        conn.execute("DELETE FROM leaf_dicts", []).unwrap();
        // A reader that has not loaded the dictionary yet cannot find it.
        let err = Leaves::default().decode(&conn, out).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupted(m) if m.contains("is missing")),
            "{err:?}"
        );
    }
}
