//! Pure RFC 6962 / RFC 9162 Merkle tree math, inclusion and consistency
//! proofs, and C2SP `tlog-checkpoint` notes signed per C2SP `signed-note`.
//!
//! Architecture invariant: this crate does no IO, has no async, no SQL and
//! no HTTP. Storage reaches it only through [`HashReader`], which reads
//! complete subtree hashes by [`NodeId`]. Parsers of untrusted input return
//! errors and never panic.

mod merkle;
mod note;

pub use merkle::{
    Frontier, Hash, HashReader, NodeId, consistency_proof, empty_root, inclusion_proof, leaf_hash,
    node_hash, range_node_ids, tree_hash, verify_consistency, verify_inclusion,
};
pub use note::{Checkpoint, NoteSigner, NoteVerifier, SignedNote};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlogError {
    /// A requested leaf or tree size is outside the tree.
    #[error("index {index} is out of range for tree size {size}")]
    OutOfRange {
        /// The requested leaf index or old tree size.
        index: u64,
        /// The tree size it was checked against.
        size: u64,
    },
    /// A proof did not verify against the given root(s).
    #[error("proof does not verify")]
    ProofMismatch,
    /// A proof has the wrong number of hashes for its sizes.
    #[error("proof has the wrong length")]
    ProofLength,
    /// The [`HashReader`] returned fewer or more hashes than asked.
    #[error("hash reader returned {got} hashes for {asked} ids")]
    ReaderShape {
        /// Number of ids requested.
        asked: usize,
        /// Number of hashes returned.
        got: usize,
    },
    /// The [`HashReader`] failed; the message comes from the storage layer.
    #[error("hash reader failed: {0}")]
    Reader(String),
    /// A note, checkpoint or key could not be parsed.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What was being parsed (note, checkpoint, key).
        what: &'static str,
        /// Why it was rejected.
        why: String,
    },
    /// No signature on the note verified with the given key.
    #[error("no valid signature by {0}")]
    BadSignature(String),
}

pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> TlogError {
    TlogError::Malformed {
        what,
        why: why.into(),
    }
}
