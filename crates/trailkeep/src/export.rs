//! Export bundles and their offline verification.
//!
//! A bundle is NDJSON. Line `i` (from 0) is
//! `{"index":i,"leaf_hash":"<base64>","event":<leaf>}` where `<leaf>` is the
//! event's leaf encoding byte for byte and `leaf_hash` the hash the store
//! recorded for it; the last line is `{"checkpoint":"<signed note>"}`.
//! Verification needs only `tlog`, the model and the verifier key.

use std::sync::Arc;

use axum::body::Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::Stream;
use tlog::{Checkpoint, Frontier, NoteVerifier};

use crate::store::EventStore;

mod line;

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
                let mut line = serde_json::to_vec(&serde_json::json!({ "checkpoint": note }))
                    .expect("serializes");
                line.push(b'\n');
                return Some((Ok(Bytes::from(line)), (from, None)));
            }
            let to = (from + chunk).min(size);
            // Rows are written as stored, gaps included: judging them is the
            // verifier's job, so a damaged store still exports what it holds.
            match store.scan_tenant(tenant_id, from, to).await {
                Ok(rows) => {
                    let mut buf = Vec::with_capacity(rows.iter().map(|r| r.leaf.len() + 80).sum());
                    for r in rows {
                        buf.extend_from_slice(
                            format!(
                                "{{\"index\":{},\"leaf_hash\":\"{}\",\"event\":",
                                r.index,
                                B64.encode(r.leaf_hash)
                            )
                            .as_bytes(),
                        );
                        buf.extend_from_slice(&r.leaf);
                        buf.extend_from_slice(b"}\n");
                    }
                    Some((Ok(Bytes::from(buf)), (to, checkpoint)))
                }
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
    #[error("root mismatch: the events do not hash to the signed root")]
    RootMismatch,
    /// The bundle's first `size` events do not match a trusted checkpoint.
    #[error("the log forked: its first {size} events differ from the trusted checkpoint")]
    Forked {
        /// Size of the trusted checkpoint.
        size: u64,
    },
}

/// A verified bundle's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed checkpoint.
    pub checkpoint: Checkpoint,
    /// Events re-hashed.
    pub events: u64,
}

#[derive(serde::Deserialize)]
struct Line<'a> {
    index: u64,
    #[serde(borrow)]
    leaf_hash: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event: &'a serde_json::value::RawValue,
}

/// The one leaf member the verifier needs; the rest of the leaf is hashed,
/// not decoded, which keeps verification close to the cost of SHA-256.
#[derive(serde::Deserialize)]
struct LeafIndex {
    index: u64,
}

/// Verifies a bundle: every line decodes, sits at its own index and
/// re-hashes to its recorded leaf hash; the leaves rebuild the signed root;
/// the signature verifies. With `trusted`, an earlier checkpoint of the same
/// log, the bundle must also extend it (same root at its size), which
/// catches a log rolled back and re-signed.
///
/// # Errors
/// The first problem found, naming the index.
pub fn verify_bundle(
    bundle: &[u8],
    verifier: &NoteVerifier,
    trusted: Option<&Checkpoint>,
) -> Result<Verified, VerifyError> {
    let mut frontier = Frontier::empty();
    let mut checkpoint_note: Option<String> = None;
    let mut root_at_trusted = None;
    let mut at = 0;
    // Lines are split on '\n' and empty ones skipped.
    while let Some(&first) = bundle.get(at) {
        if first == b'\n' {
            at += 1;
            continue;
        }
        let rest = &bundle[at..];
        let index = frontier.size();
        if trusted.is_some_and(|t| t.size == index) {
            root_at_trusted = Some(frontier.root());
        }
        if checkpoint_note.is_some() {
            return Err(VerifyError::BadEvent {
                index,
                why: "data after the checkpoint line".into(),
            });
        }
        if rest.starts_with(b"{\"checkpoint\":") {
            let line = until_newline(rest);
            let v: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| VerifyError::Checkpoint(format!("unreadable checkpoint line: {e}")))?;
            let note = v["checkpoint"].as_str().ok_or(VerifyError::NoCheckpoint)?;
            checkpoint_note = Some(note.to_owned());
            at += line.len();
            continue;
        }
        // The scanner takes well-formed lines without building anything;
        // a line it declines, or whose hash differs, goes through serde,
        // which re-checks everything and words the error.
        let scanned = line::scan(rest, index).and_then(|l| {
            let hash = tlog::leaf_hash(l.leaf);
            (hash == l.leaf_hash).then_some((hash, l.len))
        });
        let (hash, len) = match scanned {
            Some(found) => found,
            None => {
                let line = until_newline(rest);
                (check_line(line, index)?, line.len())
            }
        };
        frontier.push(hash);
        at += len;
    }
    if trusted.is_some_and(|t| t.size == frontier.size()) {
        root_at_trusted = Some(frontier.root());
    }
    let note = checkpoint_note.ok_or(VerifyError::NoCheckpoint)?;
    let checkpoint =
        Checkpoint::open(&note, verifier).map_err(|e| VerifyError::Checkpoint(e.to_string()))?;
    if checkpoint.size != frontier.size() {
        return Err(VerifyError::SizeMismatch {
            events: frontier.size(),
            size: checkpoint.size,
        });
    }
    if checkpoint.root != frontier.root() {
        return Err(VerifyError::RootMismatch);
    }
    if let Some(t) = trusted {
        if t.origin != checkpoint.origin {
            return Err(VerifyError::Checkpoint(format!(
                "trusted checkpoint is of {}, the bundle of {}",
                t.origin, checkpoint.origin
            )));
        }
        if t.size > frontier.size() {
            return Err(VerifyError::BadEvent {
                index: frontier.size(),
                why: format!(
                    "log rolled back: the trusted checkpoint covers {} events",
                    t.size
                ),
            });
        }
        if root_at_trusted != Some(t.root) {
            return Err(VerifyError::Forked { size: t.size });
        }
    }
    Ok(Verified {
        events: frontier.size(),
        checkpoint,
    })
}

/// The line at the start of `rest`, without its newline.
fn until_newline(rest: &[u8]) -> &[u8] {
    let len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    &rest[..len]
}

/// Checks event line `line` (no newline) with serde: it decodes, holds
/// `index` both in the line and in the leaf, and its leaf re-hashes to the
/// recorded hash. Returns the leaf hash.
fn check_line(line: &[u8], index: u64) -> Result<tlog::Hash, VerifyError> {
    let bad = |why: String| VerifyError::BadEvent { index, why };
    let parsed: Line<'_> =
        serde_json::from_slice(line).map_err(|e| bad(format!("unreadable line: {e}")))?;
    let leaf = parsed.event.get().as_bytes();
    let event: LeafIndex =
        serde_json::from_slice(leaf).map_err(|e| bad(format!("not a leaf: {e}")))?;
    if parsed.index != index || event.index != index {
        return Err(bad(format!(
            "event missing or out of order: line holds index {} (event says {})",
            parsed.index, event.index
        )));
    }
    let hash = tlog::leaf_hash(leaf);
    // Room for base64's length estimate; a valid hash decodes to 32 bytes.
    let mut recorded = [0u8; 48];
    let recorded_ok = matches!(
        B64.decode_slice(parsed.leaf_hash.as_bytes(), &mut recorded),
        Ok(32)
    );
    if !recorded_ok || recorded[..32] != hash {
        return Err(bad(
            "event payload does not match its recorded leaf hash".into()
        ));
    }
    Ok(hash)
}

#[cfg(test)]
mod tests;
