//! `verify_bundle` against a reference that reads every line with serde:
//! same verdict, same error, on good bundles and on damaged ones.

use super::*;

/// The verifier with every event line read by serde, as before the scanner.
fn reference(
    bundle: &[u8],
    verifier: &NoteVerifier,
    trusted: Option<&Checkpoint>,
) -> Result<Verified, VerifyError> {
    let mut frontier = Frontier::empty();
    let mut checkpoint_note: Option<String> = None;
    let mut root_at_trusted = None;
    for line in bundle.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
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
        if line.starts_with(b"{\"checkpoint\":") {
            let v: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| VerifyError::Checkpoint(format!("unreadable checkpoint line: {e}")))?;
            let note = v["checkpoint"].as_str().ok_or(VerifyError::NoCheckpoint)?;
            checkpoint_note = Some(note.to_owned());
            continue;
        }
        frontier.append(check_line(line, index)?);
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

fn leaf(index: u64) -> String {
    format!(
        r#"{{"v":1,"id":"e{index}","tenant":"t","index":{index},"action":"a\"b","actor":{{"id":"u","type":"user"}},"metadata":{{"n":[1.5e3,-2],"index":7}}}}"#
    )
}

/// A bundle of `n` events as `stream` writes it, its signer's verifier, and
/// the checkpoint at every size.
fn bundle(n: u64) -> (Vec<u8>, NoteVerifier, Vec<Checkpoint>) {
    let signer = tlog::NoteSigner::new("test.example", &[7; 32]).unwrap();
    let mut frontier = Frontier::empty();
    let mut checkpoints = Vec::new();
    let mut out = Vec::new();
    let checkpoint = |frontier: &Frontier| Checkpoint {
        origin: "test.example/t".into(),
        size: frontier.size(),
        root: frontier.root(),
    };
    for index in 0..n {
        checkpoints.push(checkpoint(&frontier));
        let leaf = leaf(index);
        let hash = tlog::leaf_hash(leaf.as_bytes());
        frontier.push(hash);
        out.extend_from_slice(
            format!(
                "{{\"index\":{index},\"leaf_hash\":\"{}\",\"event\":{leaf}}}\n",
                B64.encode(hash)
            )
            .as_bytes(),
        );
    }
    let last = checkpoint(&frontier);
    let note = last.sign(&signer).unwrap();
    checkpoints.push(last);
    out.extend_from_slice(&serde_json::to_vec(&serde_json::json!({ "checkpoint": note })).unwrap());
    out.push(b'\n');
    (out, signer.verifier(), checkpoints)
}

fn lines(bundle: &[u8]) -> Vec<Vec<u8>> {
    bundle
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn a_good_bundle_verifies() {
    let (bytes, verifier, cps) = bundle(6);
    let v = verify_bundle(&bytes, &verifier, Some(&cps[3])).unwrap();
    assert_eq!(v.events, 6);
    assert_eq!(v.checkpoint, cps[6]);
    assert_eq!(Ok(v), reference(&bytes, &verifier, Some(&cps[3])));
}

#[test]
fn damage_is_reported_as_before() {
    let (bytes, verifier, _) = bundle(6);
    let all = lines(&bytes);
    let join = |ls: &[Vec<u8>]| ls.concat();
    let edit = |from: &str, to: &str| {
        String::from_utf8(bytes.clone())
            .unwrap()
            .replacen(from, to, 1)
    };
    let swapped = join(&[&all[..2], &all[3..4], &all[2..3], &all[4..]].concat());
    let missing = join(&[&all[..4], &all[5..]].concat());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            edit(r#"a\"b"#, r#"a\"c"#).into_bytes(),
            "index 0: event payload does not match its recorded leaf hash",
        ),
        (
            swapped,
            "index 2: event missing or out of order: line holds index 3 (event says 3)",
        ),
        (
            missing,
            "index 4: event missing or out of order: line holds index 5 (event says 5)",
        ),
        (
            edit(r#""tenant":"t","index":0"#, r#""tenant":"t","index":00"#).into_bytes(),
            "index 0: unreadable line: invalid number",
        ),
        (
            edit(r#""tenant":"t","index":1,"#, r#""tenant":"t","#).into_bytes(),
            "index 1: not a leaf: missing field `index`",
        ),
        (
            edit(
                r#""tenant":"t","index":1,"#,
                r#""tenant":"t","index":1,"index":1,"#,
            )
            .into_bytes(),
            "index 1: not a leaf: duplicate field `index`",
        ),
        (
            edit(r#"{"index":2,"#, r#"{"index":2 ,"#).into_bytes(),
            "verified",
        ),
        (
            edit(r#"{"index":2,"#, r#"{"index":2,,"#).into_bytes(),
            "index 2: unreadable line",
        ),
        (
            edit("\n{\"index\":3", "\n\n\n{\"index\":3").into_bytes(),
            "verified",
        ),
        (
            [&bytes[..], b"{}\n"].concat(),
            "index 6: data after the checkpoint line",
        ),
        (join(&all[..6]), "the bundle has no checkpoint line"),
    ];
    for (damaged, want) in &cases {
        let got = verify_bundle(damaged, &verifier, None);
        assert_eq!(got, reference(damaged, &verifier, None), "{want}");
        match got {
            Ok(_) => assert_eq!(*want, "verified"),
            Err(e) => assert!(e.to_string().starts_with(want), "{e} / {want}"),
        }
    }
}

/// Random edits of a good bundle, some aimed at its structure: the verdict
/// and the error are the reference's every time. Deterministic.
#[test]
fn random_damage_gets_the_reference_verdict() {
    const BYTES: &[u8] = b"\"\\{}[],:0123456789 \n\t.eE-+u/abx";
    let (base, verifier, cps) = bundle(9);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % below as u64).expect("fits")
    };
    for round in 0..20_000 {
        let mut bytes = base.clone();
        if round % 5 == 0 {
            let mut ls = lines(&bytes);
            let (a, b) = (next(ls.len()), next(ls.len()));
            match next(3) {
                0 => ls.swap(a, b),
                1 => {
                    ls.remove(a);
                }
                _ => ls.insert(a, ls[b].clone()),
            }
            bytes = ls.concat();
        } else {
            for _ in 0..=next(2) {
                let at = next(bytes.len());
                let byte = BYTES[next(BYTES.len())];
                match next(3) {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
        }
        let trusted = (round % 3 == 0).then(|| &cps[next(cps.len())]);
        assert_eq!(
            verify_bundle(&bytes, &verifier, trusted),
            reference(&bytes, &verifier, trusted),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}
