//! Export bundles and their offline verification.
//!
//! A bundle is NDJSON: line `i` (from 0) is the leaf encoding of the event
//! at index `i`, byte for byte, and the last line is
//! `{"checkpoint":"<signed note>"}`. Verification needs only `tlog`, the
//! model and the verifier key.

use std::sync::Arc;

use axum::body::Bytes;
use futures_util::Stream;
use tlog::{Checkpoint, Frontier, NoteVerifier};

use crate::model::Event;
use crate::store::EventStore;

/// Streams a tenant's bundle: leaves `[0, size)` then the checkpoint line.
pub fn stream(
    store: Arc<dyn EventStore>,
    tenant_id: i64,
    size: u64,
    checkpoint: String,
    chunk: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold((0u64, Some(checkpoint)), move |(from, checkpoint)| {
        let store = store.clone();
        async move {
            if from >= size {
                let note = checkpoint?;
                let mut line = serde_json::to_vec(&serde_json::json!({ "checkpoint": note })).expect("serializes");
                line.push(b'\n');
                return Some((Ok(Bytes::from(line)), (from, None)));
            }
            let to = (from + chunk).min(size);
            match store.scan_tenant(tenant_id, from, to).await {
                Ok(rows) if rows.len() as u64 == to - from => {
                    let mut buf = Vec::with_capacity(rows.iter().map(|r| r.leaf.len() + 1).sum());
                    for r in rows {
                        buf.extend_from_slice(&r.leaf);
                        buf.push(b'\n');
                    }
                    Some((Ok(Bytes::from(buf)), (to, checkpoint)))
                }
                Ok(rows) => Some((
                    Err(std::io::Error::other(format!("expected {} events from index {from}, found {}", to - from, rows.len()))),
                    (size, None),
                )),
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), (size, None))),
            }
        }
    })
}

/// What a bundle verification found wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// A line is not a decodable event, or holds the wrong index.
    #[error("index {index}: {why}")]
    BadEvent {
        /// Line number, which must equal the event's index.
        index: u64,
        /// What is wrong.
        why: String,
    },
    /// The bundle has no checkpoint line.
    #[error("the bundle has no checkpoint line")]
    NoCheckpoint,
    /// The checkpoint's signature or format is wrong.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The rebuilt tree does not match the checkpoint.
    #[error("the bundle holds {events} events but the checkpoint covers {size}")]
    SizeMismatch {
        /// Events in the bundle.
        events: u64,
        /// Checkpoint size.
        size: u64,
    },
    /// The root rebuilt from the events differs from the signed root.
    #[error("root mismatch: the events do not hash to the signed root (first index that differs from the signed tree cannot be told from the root alone)")]
    RootMismatch,
}

/// A verified bundle's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed checkpoint.
    pub checkpoint: Checkpoint,
    /// Events re-hashed.
    pub events: u64,
}

/// Verifies a bundle: every line decodes and carries its own index, the
/// re-hashed leaves rebuild the signed root, and the signature verifies.
///
/// # Errors
/// The first problem found, naming the index.
pub fn verify_bundle(bundle: &[u8], verifier: &NoteVerifier) -> Result<Verified, VerifyError> {
    let mut frontier = Frontier::empty();
    let mut checkpoint_note: Option<String> = None;
    for line in bundle.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let index = frontier.size();
        if checkpoint_note.is_some() {
            return Err(VerifyError::BadEvent { index, why: "data after the checkpoint line".into() });
        }
        if line.starts_with(b"{\"checkpoint\":") {
            let v: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| VerifyError::Checkpoint(format!("unreadable checkpoint line: {e}")))?;
            let note = v["checkpoint"].as_str().ok_or(VerifyError::NoCheckpoint)?;
            checkpoint_note = Some(note.to_owned());
            continue;
        }
        let event = Event::from_leaf(line).map_err(|e| VerifyError::BadEvent { index, why: format!("not a leaf: {e}") })?;
        if event.index != index {
            return Err(VerifyError::BadEvent { index, why: format!("line holds index {}", event.index) });
        }
        frontier.append(tlog::leaf_hash(line));
    }
    let note = checkpoint_note.ok_or(VerifyError::NoCheckpoint)?;
    let checkpoint = Checkpoint::open(&note, verifier).map_err(|e| VerifyError::Checkpoint(e.to_string()))?;
    if checkpoint.size != frontier.size() {
        return Err(VerifyError::SizeMismatch { events: frontier.size(), size: checkpoint.size });
    }
    if checkpoint.root != frontier.root() {
        return Err(VerifyError::RootMismatch);
    }
    Ok(Verified { events: frontier.size(), checkpoint })
}
