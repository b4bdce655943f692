//! Merkle tests: vendored RFC 6962 vectors, a naive reference tree, and
//! property tests that every proof verifies and every corruption fails.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn unhex32(s: &str) -> Hash {
    unhex(s).try_into().unwrap()
}

fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("../../tests/data/rfc6962_vectors.json")).unwrap()
}

fn hexes(v: &serde_json::Value) -> Vec<Hash> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| unhex32(h.as_str().unwrap()))
        .collect()
}

/// A tree built by appending `leaves`, stored as a map like a log would.
fn stored_tree(leaves: &[Vec<u8>]) -> (HashMap<NodeId, Hash>, Vec<Hash>) {
    let mut store = HashMap::new();
    let mut frontier = Frontier::empty();
    let mut roots = vec![frontier.root()];
    for leaf in leaves {
        for (id, h) in frontier.append(leaf_hash(leaf)) {
            assert!(store.insert(id, h).is_none(), "node {id:?} written twice");
        }
        roots.push(frontier.root());
    }
    (store, roots)
}

/// RFC 6962 §2.1 MTH, computed directly from the leaves.
fn naive_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
        }
    }
}

fn vector_leaves() -> Vec<Vec<u8>> {
    vectors()["leaves_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| unhex(h.as_str().unwrap()))
        .collect()
}

#[test]
fn roots_match_rfc6962_vectors() {
    let v = vectors();
    let (store, roots) = stored_tree(&vector_leaves());
    let want = hexes(&v["roots_by_size_hex"]);
    assert_eq!(roots, want);
    for (size, root) in want.iter().enumerate() {
        assert_eq!(
            &tree_hash(size as u64, &store).unwrap(),
            root,
            "size {size}"
        );
    }
}

#[test]
fn stored_nodes_match_rfc6962_vectors() {
    let v = vectors();
    let (store, _) = stored_tree(&vector_leaves());
    let mut n_nodes = 0;
    for (level, hashes) in v["node_hashes_by_level_hex"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for (index, h) in hexes(hashes).iter().enumerate() {
            assert_eq!(store[&NodeId::new(level as u8, index as u64)], *h);
            n_nodes += 1;
        }
    }
    assert_eq!(store.len(), n_nodes, "a tree of 8 stores exactly 15 nodes");
}

#[test]
fn inclusion_proofs_match_rfc6962_vectors() {
    let v = vectors();
    let leaves = vector_leaves();
    let (store, roots) = stored_tree(&leaves);
    for case in v["inclusion"].as_array().unwrap() {
        let index = case["leaf_index"].as_u64().unwrap();
        let size = case["tree_size"].as_u64().unwrap();
        let want = hexes(&case["proof_hex"]);
        assert_eq!(
            inclusion_proof(index, size, &store).unwrap(),
            want,
            "{case}"
        );
        let leaf = leaf_hash(&leaves[index as usize]);
        verify_inclusion(index, size, &leaf, &want, &roots[size as usize]).unwrap();
    }
}

#[test]
fn consistency_proofs_match_rfc6962_vectors() {
    let v = vectors();
    let (store, roots) = stored_tree(&vector_leaves());
    for case in v["consistency"].as_array().unwrap() {
        let old = case["old"].as_u64().unwrap();
        let new = case["new"].as_u64().unwrap();
        let want = hexes(&case["proof_hex"]);
        assert_eq!(consistency_proof(old, new, &store).unwrap(), want, "{case}");
        verify_consistency(old, new, &want, &roots[old as usize], &roots[new as usize]).unwrap();
    }
}

#[test]
fn degenerate_sizes() {
    let h = leaf_hash(b"data");
    verify_inclusion(0, 1, &h, &[], &h).unwrap();
    assert!(verify_inclusion(0, 0, &h, &[], &h).is_err());
    assert!(verify_inclusion(1, 1, &h, &[], &h).is_err());
    let e = empty_root();
    verify_consistency(0, 5, &[], &e, &h).unwrap();
    assert!(verify_consistency(0, 5, &[h], &e, &h).is_err());
    assert!(verify_consistency(1, 1, &[], &e, &h).is_err());
    assert!(verify_consistency(2, 1, &[], &h, &h).is_err());
    assert!(verify_consistency(1, 2, &[], &h, &e).is_err());
}

#[test]
fn frontier_load_continues_the_same_tree() {
    let leaves: Vec<Vec<u8>> = (0..37u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let (store, roots) = stored_tree(&leaves);
    for size in 0..=37u64 {
        let mut f = Frontier::load(size, &store).unwrap();
        assert_eq!(f.root(), roots[size as usize]);
        if size < 37 {
            f.append(leaf_hash(&leaves[size as usize]));
            assert_eq!(f.root(), roots[size as usize + 1]);
        }
    }
}

#[test]
fn frontier_push_builds_the_same_tree_as_append() {
    let leaves: Vec<Vec<u8>> = (0..70u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let (_, roots) = stored_tree(&leaves);
    let mut appended = Frontier::empty();
    let mut pushed = Frontier::empty();
    for (i, leaf) in leaves.iter().enumerate() {
        appended.append(leaf_hash(leaf));
        pushed.push(leaf_hash(leaf));
        assert_eq!(pushed, appended);
        assert_eq!(pushed.root(), roots[i + 1]);
    }
}

fn flip(hashes: &[Hash], which: usize, byte: usize) -> Vec<Hash> {
    let mut out = hashes.to_vec();
    out[which][byte] ^= 0x01;
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_inclusion_proof_verifies_and_any_flip_fails(n in 1u64..300, pick in any::<u64>(), byte in 0usize..32) {
        let leaves: Vec<Vec<u8>> = (0..n).map(|i| i.to_le_bytes().to_vec()).collect();
        let (store, roots) = stored_tree(&leaves);
        let hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
        prop_assert_eq!(roots[n as usize], naive_root(&hashes));
        let size = 1 + pick % n;
        let root = roots[size as usize];
        for index in 0..size {
            let proof = inclusion_proof(index, size, &store).unwrap();
            let leaf = hashes[index as usize];
            prop_assert!(verify_inclusion(index, size, &leaf, &proof, &root).is_ok());
            for which in 0..proof.len() {
                prop_assert!(verify_inclusion(index, size, &leaf, &flip(&proof, which, byte), &root).is_err());
            }
            let mut bad_root = root;
            bad_root[byte] ^= 0x80;
            prop_assert!(verify_inclusion(index, size, &leaf, &proof, &bad_root).is_err());
            if size > 1 {
                prop_assert!(verify_inclusion((index + 1) % size, size, &leaf, &proof, &root).is_err());
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_any_flip_fails(n in 1u64..200, a in any::<u64>(), byte in 0usize..32) {
        let leaves: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
        let (store, roots) = stored_tree(&leaves);
        let old_probe = 1 + a % n;
        for old in [old_probe, 1, n] {
            for new in old..=n {
                let proof = consistency_proof(old, new, &store).unwrap();
                let (r1, r2) = (roots[old as usize], roots[new as usize]);
                prop_assert!(verify_consistency(old, new, &proof, &r1, &r2).is_ok());
                for which in 0..proof.len() {
                    prop_assert!(verify_consistency(old, new, &flip(&proof, which, byte), &r1, &r2).is_err());
                }
                if old != new {
                    let mut bad = r1;
                    bad[byte] ^= 0x04;
                    prop_assert!(verify_consistency(old, new, &proof, &bad, &r2).is_err());
                    let mut bad = r2;
                    bad[byte] ^= 0x04;
                    prop_assert!(verify_consistency(old, new, &proof, &r1, &bad).is_err());
                }
            }
        }
    }
}
