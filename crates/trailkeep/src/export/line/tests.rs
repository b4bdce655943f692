//! The scanner against serde: whatever it accepts, serde reads the same way.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::*;
use crate::export::{LeafIndex, Line};

/// A leaf in the v1 shape with the awkward parts JSON allows: escapes,
/// non-ASCII text, nested containers, empty ones, every kind of number.
fn leaf(index: u64) -> String {
    format!(
        concat!(
            r#"{{"v":1,"id":"01a209e3-e172-7cf7-9080-0e6cd97ccd44","tenant":"t","index":{},"#,
            r#""received_at":"2026-11-23T19:30:59.058193Z","action":"user.login","#,
            r#""actor":{{"id":"u \"q\" \\ \/ \b\f\n\r\t \u00e9","type":"user","name":"Zoë 東京"}},"#,
            r#""targets":[{{"id":"d","index":3}},[],{{}}],"tags":["a","b"],"#,
            r#""metadata":{{"n":[0,-0,12,-3.25,1e9,2E-3,4.5e+1,true,false,null],"index":"x"}}}}"#
        ),
        index
    )
}

/// An event line as `export::stream` writes it.
fn line_for(leaf: &str, index: u64) -> String {
    format!(
        r#"{{"index":{index},"leaf_hash":"{}","event":{leaf}}}"#,
        B64.encode(tlog::leaf_hash(leaf.as_bytes()))
    )
}

/// What serde reads from an event line: line index, hash text, leaf, leaf index.
fn serde_reads(line: &[u8]) -> Option<(u64, String, Vec<u8>, u64)> {
    let parsed: Line<'_> = serde_json::from_slice(line).ok()?;
    let leaf = parsed.event.get().as_bytes();
    let event: LeafIndex = serde_json::from_slice(leaf).ok()?;
    Some((
        parsed.index,
        parsed.leaf_hash.into_owned(),
        leaf.to_vec(),
        event.index,
    ))
}

/// Asserts the contract: an accepted line is read identically by serde.
fn assert_agrees(bytes: &[u8], index: u64) -> bool {
    let Some(got) = scan(bytes, index) else {
        return false;
    };
    let line_len = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    assert_eq!(got.len, line_len, "{}", String::from_utf8_lossy(bytes));
    let (line_index, hash, leaf, leaf_index) = serde_reads(&bytes[..line_len])
        .unwrap_or_else(|| panic!("serde rejects {}", String::from_utf8_lossy(bytes)));
    assert_eq!((line_index, leaf_index), (index, index));
    let mut decoded = [0u8; 48];
    assert_eq!(B64.decode_slice(hash.as_bytes(), &mut decoded), Ok(32));
    assert_eq!(decoded[..32], got.leaf_hash);
    assert_eq!(leaf, got.leaf);
    true
}

#[test]
fn accepts_what_stream_writes() {
    for index in [0, 7, 10, 12_345, u64::MAX] {
        let leaf = leaf(index);
        let line = line_for(&leaf, index);
        let got = scan(line.as_bytes(), index).expect("accepted");
        assert_eq!(got.leaf, leaf.as_bytes());
        assert_eq!(got.len, line.len());
        let followed = format!("{line}\n{line}\n");
        assert!(assert_agrees(followed.as_bytes(), index));
    }
}

#[test]
fn declines_what_it_does_not_read_exactly() {
    let good = line_for(&leaf(5), 5);
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace(r#""index":5,"r"#, r#""ind\u0065x":5,"r"#),
            "escaped top-level key",
        ),
        (
            good.replace(r#""index":5,"r"#, r#""index":5,"index":5,"r"#),
            "index twice",
        ),
        (
            good.replace(r#""index":5,"r"#, r#""index":-0,"r"#),
            "negative zero",
        ),
        (
            good.replace(r#""index":5,"r"#, r#""index":05,"r"#),
            "leading zero",
        ),
        (
            good.replace(r#""index":5,"r"#, r#""index":5.0,"r"#),
            "fraction",
        ),
        (
            good.replace(r#""index":5,"r"#, r#""index":5e0,"r"#),
            "exponent",
        ),
        (
            good.replace(r#""index":5,"r"#, r#""index":6,"r"#),
            "wrong leaf index",
        ),
        (good.replace(r#""index":5,"r"#, r#""r"#), "no leaf index"),
        (
            good.replace(r#"{"index":5,"l"#, r#"{"index":6,"l"#),
            "wrong line index",
        ),
        (
            good.replace(r#"{"index":5,"l"#, r#"{"index": 5,"l"#),
            "whitespace",
        ),
        (
            good.replace(r#""tags":"#, r#""tags": "#),
            "whitespace in the leaf",
        ),
        (good.replace('ë', "\u{1}"), "control byte"),
        (good.replace(r#"\u00e9"#, r#"\u00g9"#), "bad \\u escape"),
        (good.replace(r#"\/"#, r#"\x"#), "bad escape"),
        (good.replace("[0,-0", "[00,-0"), "leading zero inside"),
        (good.replace("-3.25", "-3."), "fraction without digits"),
        (good.replace("1e9", "1e"), "exponent without digits"),
        (good.replace("true", "tru"), "bad literal"),
        (good.replace(r#""a","b""#, r#""a",,"b""#), "double comma"),
        (
            good.replace(r#""a","b"]"#, r#""a","b",]"#),
            "trailing comma",
        ),
        (good.replace(r#"[],{}"#, r#"[],{}]"#), "unbalanced"),
        (good.clone() + " ", "trailing space"),
        (good.clone() + "}", "trailing brace"),
        (good.clone() + "\r", "carriage return"),
        (
            good.replace(r#""event":"#, r#""event": "#),
            "space before the leaf",
        ),
        (
            good.replace(r#"","event""#, r#"","extra":1,"event""#),
            "extra line member",
        ),
        (good[..good.len() - 1].to_owned(), "truncated"),
    ];
    for (line, why) in &cases {
        assert_ne!(line, &good, "{why}: the edit did not apply");
        assert!(scan(line.as_bytes(), 5).is_none(), "{why}: {line}");
    }
    let mut hash = good.clone().into_bytes();
    hash[24] = b'\\';
    assert!(scan(&hash, 5).is_none(), "escape in the hash");
    let mut not_utf8 = good.into_bytes();
    let at = not_utf8.iter().position(|&b| b >= 0x80).unwrap();
    not_utf8[at] = 0xff;
    assert!(scan(&not_utf8, 5).is_none(), "not UTF-8");
}

#[test]
fn nesting_beyond_the_limit_goes_to_serde() {
    let nested = |depth: u32| {
        let depth = depth as usize;
        let leaf = format!(
            r#"{{"index":1,"deep":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        line_for(&leaf, 1)
    };
    assert!(assert_agrees(nested(MAX_DEPTH).as_bytes(), 1));
    let deeper = nested(MAX_DEPTH + 1);
    assert!(scan(deeper.as_bytes(), 1).is_none());
    assert!(serde_reads(deeper.as_bytes()).is_some());
}

/// Random edits of a good line: every one the scanner accepts, serde reads
/// the same way. Deterministic, so a failure reproduces.
#[test]
fn random_edits_never_make_the_scanner_laxer_than_serde() {
    const BYTES: &[u8] = b"\"\\{}[],:0123456789 \n\t.eE-+u/abfnrtx";
    let base = line_for(&leaf(9), 9).into_bytes();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % below as u64).expect("fits")
    };
    let mut accepted = 0;
    for _ in 0..200_000 {
        let mut line = base.clone();
        for _ in 0..=next(3) {
            let at = next(line.len());
            let byte = match next(4) {
                0 => 0x80 | u8::try_from(next(128)).expect("fits"),
                1 => u8::try_from(next(0x20)).expect("fits"),
                _ => BYTES[next(BYTES.len())],
            };
            match next(3) {
                0 => line[at] = byte,
                1 => line.insert(at, byte),
                _ => {
                    line.remove(at);
                }
            }
        }
        if assert_agrees(&line, 9) {
            accepted += 1;
        }
    }
    // Edits inside string values keep many lines valid: the check has teeth.
    assert!(accepted > 1_000, "only {accepted} edited lines accepted");
}
