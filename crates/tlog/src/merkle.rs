//! RFC 6962 §2.1 Merkle Tree Hash, audit paths (§2.1.1), consistency proofs
//! (§2.1.2) and their verification as written in RFC 9162 §2.1.3.2 and
//! §2.1.4.2.
//!
//! Storage model: a log persists the hash of every *complete* subtree, named
//! by [`NodeId`] `(level, index)`, covering leaves
//! `[index << level, (index + 1) << level)`. Appending one leaf creates one
//! level-0 node plus one node per level that it completes (about two nodes
//! per leaf on average). Every subtree the RFC recursion visits starts at an
//! offset divisible by the next power of two at or above its size, so it
//! decomposes into at most 64 complete subtrees; a root or proof therefore
//! needs O(log n) stored hashes, all named before any is read.

use sha2::{Digest, Sha256};

use crate::TlogError;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// A complete subtree of `1 << level` leaves starting at leaf `index << level`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    /// Height above the leaves; 0 is a leaf hash.
    pub level: u8,
    /// Position among the nodes of that level, from the left.
    pub index: u64,
}

impl NodeId {
    /// A node id from its level and index.
    #[must_use]
    pub const fn new(level: u8, index: u64) -> Self {
        Self { level, index }
    }
}

/// Reads stored complete-subtree hashes; implemented by the storage layer.
pub trait HashReader {
    /// Returns the hashes of `ids`, in the same order.
    ///
    /// # Errors
    /// Whatever the storage fails with, as [`TlogError::Reader`].
    fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, TlogError>;
}

impl HashReader for std::collections::HashMap<NodeId, Hash> {
    fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, TlogError> {
        ids.iter()
            .map(|id| {
                self.get(id)
                    .copied()
                    .ok_or_else(|| TlogError::Reader(format!("missing node {id:?}")))
            })
            .collect()
    }
}

/// RFC 6962 leaf hash: `SHA-256(0x00 || leaf)`.
#[must_use]
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// RFC 6962 interior node hash: `SHA-256(0x01 || left || right)`.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
#[must_use]
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly less than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees that make up the RFC-recursion range `[start, end)`,
/// left to right (largest first).
#[must_use]
pub fn range_node_ids(start: u64, end: u64) -> Vec<NodeId> {
    let mut ids = Vec::new();
    let mut offset = start;
    let mut remaining = end - start;
    while remaining > 0 {
        let level = 63 - remaining.leading_zeros();
        let width = 1u64 << level;
        ids.push(NodeId::new(level as u8, offset >> level));
        offset += width;
        remaining -= width;
    }
    ids
}

/// Folds the hashes of [`range_node_ids`] into the range's Merkle hash.
fn fold_range(hashes: &[Hash]) -> Hash {
    let mut iter = hashes.iter().rev();
    let mut acc = *iter
        .next()
        .expect("a non-empty range has at least one node");
    for left in iter {
        acc = node_hash(left, &acc);
    }
    acc
}

/// Reads all nodes for a list of ranges in one call and hashes each range.
fn hash_ranges(ranges: &[(u64, u64)], reader: &dyn HashReader) -> Result<Vec<Hash>, TlogError> {
    let per_range: Vec<Vec<NodeId>> = ranges.iter().map(|&(a, b)| range_node_ids(a, b)).collect();
    let all: Vec<NodeId> = per_range.iter().flatten().copied().collect();
    let hashes = reader.read_hashes(&all)?;
    if hashes.len() != all.len() {
        return Err(TlogError::ReaderShape {
            asked: all.len(),
            got: hashes.len(),
        });
    }
    let mut out = Vec::with_capacity(ranges.len());
    let mut at = 0;
    for ids in &per_range {
        out.push(fold_range(&hashes[at..at + ids.len()]));
        at += ids.len();
    }
    Ok(out)
}

/// The Merkle Tree Hash of the first `size` leaves.
///
/// # Errors
/// Reader failures.
pub fn tree_hash(size: u64, reader: &dyn HashReader) -> Result<Hash, TlogError> {
    if size == 0 {
        return Ok(empty_root());
    }
    Ok(hash_ranges(&[(0, size)], reader)?[0])
}

fn inclusion_ranges(index: u64, start: u64, end: u64, out: &mut Vec<(u64, u64)>) {
    if end - start == 1 {
        return;
    }
    let k = split_point(end - start);
    if index < start + k {
        inclusion_ranges(index, start, start + k, out);
        out.push((start + k, end));
    } else {
        inclusion_ranges(index, start + k, end, out);
        out.push((start, start + k));
    }
}

/// RFC 6962 §2.1.1 audit path for leaf `index` in the tree of `size` leaves.
///
/// # Errors
/// [`TlogError::OutOfRange`] when `index >= size`; reader failures.
pub fn inclusion_proof(
    index: u64,
    size: u64,
    reader: &dyn HashReader,
) -> Result<Vec<Hash>, TlogError> {
    if index >= size {
        return Err(TlogError::OutOfRange { index, size });
    }
    let mut ranges = Vec::new();
    inclusion_ranges(index, 0, size, &mut ranges);
    hash_ranges(&ranges, reader)
}

fn consistency_ranges(old: u64, start: u64, end: u64, whole: bool, out: &mut Vec<(u64, u64)>) {
    if old == end {
        if !whole {
            out.push((start, end));
        }
        return;
    }
    let k = split_point(end - start);
    if old <= start + k {
        consistency_ranges(old, start, start + k, whole, out);
        out.push((start + k, end));
    } else {
        consistency_ranges(old, start + k, end, false, out);
        out.push((start, start + k));
    }
}

/// RFC 6962 §2.1.2 consistency proof from the tree of `old` leaves to the
/// tree of `new` leaves. Empty when `old == new` or `old == 0`.
///
/// # Errors
/// [`TlogError::OutOfRange`] when `old > new`; reader failures.
pub fn consistency_proof(
    old: u64,
    new: u64,
    reader: &dyn HashReader,
) -> Result<Vec<Hash>, TlogError> {
    if old > new {
        return Err(TlogError::OutOfRange {
            index: old,
            size: new,
        });
    }
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    let mut ranges = Vec::new();
    consistency_ranges(old, 0, new, true, &mut ranges);
    hash_ranges(&ranges, reader)
}

/// Verifies an audit path per RFC 9162 §2.1.3.2.
///
/// # Errors
/// [`TlogError::OutOfRange`] or [`TlogError::ProofMismatch`].
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), TlogError> {
    if index >= size {
        return Err(TlogError::OutOfRange { index, size });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(TlogError::ProofLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(TlogError::ProofLength);
    }
    if &r != root {
        return Err(TlogError::ProofMismatch);
    }
    Ok(())
}

/// Verifies a consistency proof per RFC 9162 §2.1.4.2.
///
/// # Errors
/// [`TlogError::OutOfRange`], [`TlogError::ProofLength`] or
/// [`TlogError::ProofMismatch`].
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), TlogError> {
    if old > new {
        return Err(TlogError::OutOfRange {
            index: old,
            size: new,
        });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(TlogError::ProofLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(TlogError::ProofMismatch)
        };
    }
    if old == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(TlogError::ProofLength)
        };
    }
    if proof.is_empty() {
        return Err(TlogError::ProofLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let mut f_n = old - 1;
    let mut s_n = new - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let mut f_r = path[0];
    let mut s_r = path[0];
    for c in &path[1..] {
        if s_n == 0 {
            return Err(TlogError::ProofLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(TlogError::ProofLength);
    }
    if &f_r != old_root || &s_r != new_root {
        return Err(TlogError::ProofMismatch);
    }
    Ok(())
}

/// The right edge of a tree: the complete subtrees that [`range_node_ids`]
/// gives for `[0, size)`. Enough to append leaves and compute the root
/// without reading anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<(NodeId, Hash)>,
}

impl Frontier {
    /// The frontier of the empty tree.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            size: 0,
            nodes: Vec::new(),
        }
    }

    /// Loads the frontier of the tree of `size` leaves with one read.
    ///
    /// # Errors
    /// Reader failures.
    pub fn load(size: u64, reader: &dyn HashReader) -> Result<Self, TlogError> {
        let ids = range_node_ids(0, size);
        let hashes = reader.read_hashes(&ids)?;
        if hashes.len() != ids.len() {
            return Err(TlogError::ReaderShape {
                asked: ids.len(),
                got: hashes.len(),
            });
        }
        Ok(Self {
            size,
            nodes: ids.into_iter().zip(hashes).collect(),
        })
    }

    /// Number of leaves in the tree.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns every node the append completes (the
    /// level-0 node first), all of which must be stored with the leaf.
    pub fn append(&mut self, leaf: Hash) -> Vec<(NodeId, Hash)> {
        let mut created = Vec::with_capacity(2);
        self.append_with(leaf, |id, hash| created.push((id, hash)));
        created
    }

    /// Appends a leaf hash and forgets the nodes it completes: the same tree
    /// as [`Frontier::append`] without allocating, for callers that store
    /// nothing (verifiers).
    pub fn push(&mut self, leaf: Hash) {
        self.append_with(leaf, |_, _| {});
    }

    /// Appends a leaf hash, handing each completed node to `created`, level
    /// 0 first. The frontier's `nodes` stays sorted by strictly decreasing
    /// level, so merging stops at the first level that differs.
    fn append_with(&mut self, leaf: Hash, mut created: impl FnMut(NodeId, Hash)) {
        let mut node = (NodeId::new(0, self.size), leaf);
        created(node.0, node.1);
        while let Some(&(left_id, left_hash)) = self.nodes.last() {
            if left_id.level != node.0.level {
                break;
            }
            self.nodes.pop();
            node = (
                NodeId::new(left_id.level + 1, left_id.index >> 1),
                node_hash(&left_hash, &node.1),
            );
            created(node.0, node.1);
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// The Merkle Tree Hash of the current tree.
    #[must_use]
    pub fn root(&self) -> Hash {
        if self.nodes.is_empty() {
            return empty_root();
        }
        let hashes: Vec<Hash> = self.nodes.iter().map(|n| n.1).collect();
        fold_range(&hashes)
    }
}

#[cfg(test)]
mod tests;
