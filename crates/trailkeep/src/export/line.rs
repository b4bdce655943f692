//! A strict scanner for bundle event lines in the exact shape
//! [`super::stream`] writes: `{"index":N,"leaf_hash":"<44 base64>","event":<leaf>}`.
//!
//! Contract: [`scan`] returns `Some` only for a line that the serde parser in
//! [`super::check_line`] reads as the same `index`, a `leaf_hash` text that
//! decodes to the same 32 bytes, and the same leaf bytes, whose leaf has
//! exactly one top-level `index` member and it equals `index`. Everything
//! else (whitespace between tokens, escapes in top-level leaf keys, nesting
//! deeper than [`MAX_DEPTH`], numbers that do not fit, a missing or
//! repeated `index`, a wrong index, bytes that are not UTF-8) gives `None`,
//! and the caller hands the line to the serde parser, which decides and
//! words the error. The scanner may therefore reject more than serde,
//! never less.
//!
//! The leaf is validated as serde's `RawValue` does (`ignore_value` plus
//! UTF-8): literals, numbers by the JSON grammar, strings with no raw
//! control characters and only the escapes `\" \\ \/ \b \f \n \r \t \uXXXX`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// What precedes the line's index.
const INDEX_KEY: &[u8] = b"{\"index\":";
/// What follows the line's index, up to the recorded hash.
const HASH_KEY: &[u8] = b",\"leaf_hash\":\"";
/// What follows the recorded hash, up to the leaf.
const EVENT_KEY: &[u8] = b"\",\"event\":";
/// Base64 length of a 32-byte hash, padding included.
const HASH_B64_LEN: usize = 44;
/// Containers the scanner follows inside a leaf member's value; deeper
/// leaves go to serde.
const MAX_DEPTH: u32 = 64;
/// 0x01 in every byte of a word.
const ONES: u64 = u64::MAX / 255;
/// 0x80 in every byte of a word.
const HIGHS: u64 = ONES << 7;

/// An event line the scanner accepted.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct EventLine<'a> {
    /// The leaf bytes, exactly the `event` member's value.
    pub(super) leaf: &'a [u8],
    /// The `leaf_hash` member, decoded.
    pub(super) leaf_hash: tlog::Hash,
    /// Length of the line, newline excluded.
    pub(super) len: usize,
}

/// Scans the line at the start of `rest` (which runs to the end of the
/// bundle) as the event line for leaf `index`. `None` means "ask serde".
pub(super) fn scan(rest: &[u8], index: u64) -> Option<EventLine<'_>> {
    let after_key = rest.strip_prefix(INDEX_KEY)?;
    let (line_index, digits) = uint(after_key)?;
    if line_index != index {
        return None;
    }
    let after_hash_key = after_key[digits..].strip_prefix(HASH_KEY)?;
    // Decoding succeeds only on base64 characters, so the text holds no
    // quote, backslash or control byte that would make serde read the
    // string differently. Room for base64's length estimate.
    let mut leaf_hash = [0u8; 48];
    if B64.decode_slice(after_hash_key.get(..HASH_B64_LEN)?, &mut leaf_hash) != Ok(32) {
        return None;
    }
    let after_event_key = after_hash_key[HASH_B64_LEN..].strip_prefix(EVENT_KEY)?;
    let leaf_start = rest.len() - after_event_key.len();
    let mut scanner = Scanner {
        s: after_event_key,
        or_of_bytes: 0,
    };
    let leaf_len = scanner.leaf_object(index)?;
    let leaf = &after_event_key[..leaf_len];
    let end = leaf_start + leaf_len;
    if rest.get(end) != Some(&b'}') || !matches!(rest.get(end + 1), None | Some(b'\n')) {
        return None;
    }
    // Serde's RawValue checks the whole leaf. Bytes >= 0x80 can only sit in
    // strings, and the scanner saw every string byte (and maybe more).
    if scanner.or_of_bytes & HIGHS != 0 && std::str::from_utf8(leaf).is_err() {
        return None;
    }
    Some(EventLine {
        leaf,
        leaf_hash: leaf_hash[..32].try_into().expect("32 bytes"),
        len: end + 1,
    })
}

/// An unsigned integer as serde reads a `u64`: digits only, no leading
/// zero, no fraction or exponent (checked by the caller's next byte), no
/// overflow. Returns the value and the digits used.
fn uint(s: &[u8]) -> Option<(u64, usize)> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    match digits {
        0 => None,
        1 => Some((u64::from(s[0] - b'0'), 1)),
        _ if s[0] == b'0' => None,
        _ => {
            let mut n = 0u64;
            for &d in &s[..digits] {
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            }
            Some((n, digits))
        }
    }
}

/// Walks one leaf, remembering every string byte it passed (ORed into
/// `or_of_bytes`) so a pure-ASCII leaf skips the UTF-8 check.
struct Scanner<'a> {
    /// The leaf and whatever follows it in the bundle.
    s: &'a [u8],
    /// Bitwise OR of at least every string byte seen, eight lanes wide.
    or_of_bytes: u64,
}

impl Scanner<'_> {
    /// The length of the leaf object at the start of `s`, which must have
    /// exactly one top-level `index` member, equal to `index`, and whose
    /// top-level keys have no escapes (serde decodes those before matching).
    fn leaf_object(&mut self, index: u64) -> Option<usize> {
        let s = self.s;
        if s.first() != Some(&b'{') {
            return None;
        }
        let mut i = 1;
        let mut seen_index = false;
        loop {
            if s.get(i) != Some(&b'"') {
                return None;
            }
            let (end, escaped) = self.string_end(i + 1)?;
            if escaped {
                return None;
            }
            let key = &s[i + 1..end - 1];
            if s.get(end) != Some(&b':') {
                return None;
            }
            i = end + 1;
            if key == b"index" {
                let (n, digits) = uint(&s[i..])?;
                if seen_index || n != index {
                    return None;
                }
                seen_index = true;
                i += digits;
            } else {
                i = self.value_end(i)?;
            }
            match s.get(i)? {
                b',' => i += 1,
                b'}' => return seen_index.then_some(i + 1),
                _ => return None,
            }
        }
    }

    /// The end of the JSON value starting at `s[i]`, following at most
    /// [`MAX_DEPTH`] nested containers.
    fn value_end(&mut self, mut i: usize) -> Option<usize> {
        let s = self.s;
        // Bit `d` is set when the container at depth `d + 1` is an object.
        let mut objects: u64 = 0;
        let mut depth: u32 = 0;
        'value: loop {
            match *s.get(i)? {
                b'"' => i = self.string_end(i + 1)?.0,
                b'-' | b'0'..=b'9' => i = number_end(s, i)?,
                b't' => i = literal_end(s, i, b"true")?,
                b'f' => i = literal_end(s, i, b"false")?,
                b'n' => i = literal_end(s, i, b"null")?,
                open @ (b'[' | b'{') => {
                    let close = if open == b'[' { b']' } else { b'}' };
                    if s.get(i + 1) == Some(&close) {
                        i += 2;
                    } else {
                        if depth == MAX_DEPTH {
                            return None;
                        }
                        objects = objects << 1 | u64::from(open == b'{');
                        depth += 1;
                        i += 1;
                        if open == b'{' {
                            i = self.member_key_end(i)?;
                        }
                        continue 'value;
                    }
                }
                _ => return None,
            }
            // After a value: close containers until one continues, or finish.
            loop {
                if depth == 0 {
                    return Some(i);
                }
                let in_object = objects & 1 == 1;
                match (*s.get(i)?, in_object) {
                    (b',', false) => {
                        i += 1;
                        continue 'value;
                    }
                    (b',', true) => {
                        i = self.member_key_end(i + 1)?;
                        continue 'value;
                    }
                    (b']', false) | (b'}', true) => {
                        i += 1;
                        objects >>= 1;
                        depth -= 1;
                    }
                    _ => return None,
                }
            }
        }
    }

    /// Past `"key":` starting at `s[i]`.
    fn member_key_end(&mut self, i: usize) -> Option<usize> {
        if self.s.get(i) != Some(&b'"') {
            return None;
        }
        let (end, _) = self.string_end(i + 1)?;
        (self.s.get(end) == Some(&b':')).then_some(end + 1)
    }

    /// Past the closing quote of the string whose contents start at `s[i]`,
    /// and whether it held an escape. No raw byte below 0x20 is allowed.
    fn string_end(&mut self, mut i: usize) -> Option<(usize, bool)> {
        let s = self.s;
        let mut escaped = false;
        loop {
            // Eight bytes at a time up to the first quote, backslash or
            // control byte. Each term flags its lowest matching byte exactly
            // (a borrow only runs upwards, past a true match), so the lowest
            // flag is the first special byte.
            while let Some(chunk) = s.get(i..i + 8) {
                let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
                self.or_of_bytes |= w;
                let quote = w ^ (ONES * u64::from(b'"'));
                let backslash = w ^ (ONES * u64::from(b'\\'));
                let special = ((w.wrapping_sub(ONES * 0x20) & !w)
                    | (quote.wrapping_sub(ONES) & !quote)
                    | (backslash.wrapping_sub(ONES) & !backslash))
                    & HIGHS;
                if special != 0 {
                    i += special.trailing_zeros() as usize / 8;
                    break;
                }
                i += 8;
            }
            match *s.get(i)? {
                b'"' => return Some((i + 1, escaped)),
                b'\\' => {
                    escaped = true;
                    i += match *s.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if s.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                        _ => return None,
                    };
                }
                0..0x20 => return None,
                b => {
                    self.or_of_bytes |= u64::from(b);
                    i += 1;
                }
            }
        }
    }
}

fn literal_end(s: &[u8], i: usize, literal: &[u8]) -> Option<usize> {
    s[i..].starts_with(literal).then_some(i + literal.len())
}

/// Past a number starting at `s[i]`, by serde's `ignore_integer`:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_end(s: &[u8], mut i: usize) -> Option<usize> {
    let digits_from = |i: usize| s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if s[i] == b'-' {
        i += 1;
    }
    match s.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i += digits_from(i),
        _ => return None,
    }
    if s.get(i).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if s.get(i) == Some(&b'.') {
        let n = digits_from(i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits_from(i);
        if n == 0 {
            return None;
        }
        i += n;
    }
    Some(i)
}

#[cfg(test)]
mod tests;
