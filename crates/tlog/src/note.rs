//! C2SP `signed-note` (Ed25519 signatures only) and C2SP `tlog-checkpoint`.
//!
//! A signed note is the note text (UTF-8, ends in `\n`, no other control
//! characters), one empty line, then one line per signature:
//! `— <key name> <base64(key id || signature)>\n`. The key id is the first
//! four bytes of `SHA-256(key name || "\n" || 0x01 || public key)`, 0x01
//! being the Ed25519 algorithm byte. A verifier key is written
//! `<name>+<hex key id>+<base64(0x01 || public key)>`, the format Go's
//! `golang.org/x/mod/sumdb/note` reads.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::{Hash, TlogError, malformed};

const ALG_ED25519: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn check_key_name(name: &str) -> Result<(), TlogError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(malformed(
            "key name",
            "must be non-empty, without '+' or spaces",
        ));
    }
    Ok(())
}

fn check_note_text(text: &str) -> Result<(), TlogError> {
    if !text.ends_with('\n') {
        return Err(malformed("note", "text must end with a newline"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(malformed("note", "text holds a control character"));
    }
    Ok(())
}

/// An Ed25519 note signer: a key name and a private key.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    id: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl NoteSigner {
    /// A signer from a key name and a 32-byte Ed25519 seed.
    ///
    /// # Errors
    /// [`TlogError::Malformed`] for an invalid key name.
    pub fn new(name: &str, seed: &[u8; 32]) -> Result<Self, TlogError> {
        check_key_name(name)?;
        let key = SigningKey::from_bytes(seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Ok(Self {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// Parses a Go-style signer key `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
    ///
    /// # Errors
    /// [`TlogError::Malformed`] when the key is malformed or its id does not match.
    pub fn from_private_key(skey: &str) -> Result<Self, TlogError> {
        let rest = skey
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| malformed("signer key", "must start with PRIVATE+KEY+"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("signer key", "expected name+keyid+key"));
        };
        let raw = B64
            .decode(key_b64)
            .map_err(|_| malformed("signer key", "key is not base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(malformed("signer key", "not an Ed25519 key"));
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&raw[1..]);
        let signer = Self::new(name, &seed)?;
        if hex4(&signer.id) != id_hex.to_ascii_lowercase() {
            return Err(malformed("signer key", "key id does not match"));
        }
        Ok(signer)
    }

    /// The Go-style signer key string; a secret, never to be logged.
    #[must_use]
    pub fn to_private_key(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex4(&self.id),
            B64.encode(raw)
        )
    }

    /// The key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier.
    #[must_use]
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` and returns the whole signed note.
    ///
    /// # Errors
    /// [`TlogError::Malformed`] when `text` is not valid note text.
    pub fn sign(&self, text: &str) -> Result<String, TlogError> {
        check_note_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.id);
        blob.extend_from_slice(&sig.to_bytes());
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

/// An Ed25519 note verifier key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<hex key id>+<base64(0x01 || key)>`.
    ///
    /// # Errors
    /// [`TlogError::Malformed`] when any part is wrong, including a key id
    /// that does not match the name and key.
    pub fn parse(vkey: &str) -> Result<Self, TlogError> {
        let vkey = vkey.trim();
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("verifier key", "expected name+keyid+key"));
        };
        check_key_name(name)?;
        let raw = B64
            .decode(key_b64)
            .map_err(|_| malformed("verifier key", "key is not base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(malformed("verifier key", "not an Ed25519 key"));
        }
        let mut public = [0u8; 32];
        public.copy_from_slice(&raw[1..]);
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| malformed("verifier key", "invalid Ed25519 point"))?;
        let id = key_id(name, &public);
        if id_hex.len() != 8 || hex4(&id) != id_hex.to_ascii_lowercase() {
            return Err(malformed("verifier key", "key id does not match"));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// The key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw 32-byte public key.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Verifies `signed` and returns the note text it signs.
    ///
    /// # Errors
    /// [`TlogError::Malformed`] for a malformed note,
    /// [`TlogError::BadSignature`] when no signature line by this key
    /// verifies.
    pub fn verify<'a>(&self, signed: &'a str) -> Result<&'a str, TlogError> {
        let note = SignedNote::parse(signed)?;
        for (name, blob) in &note.signatures {
            if name != &self.name || blob.len() != 68 || blob[..4] != self.id {
                continue;
            }
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&blob[4..]);
            if self
                .key
                .verify(note.text.as_bytes(), &Signature::from_bytes(&sig))
                .is_ok()
            {
                return Ok(note.text);
            }
        }
        Err(TlogError::BadSignature(self.name.clone()))
    }
}

impl std::fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{}+{}", self.name, hex4(&self.id), B64.encode(raw))
    }
}

fn hex4(id: &[u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed signed note: the signed text and its signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote<'a> {
    /// The note text, ending in `\n`.
    pub text: &'a str,
    /// `(key name, key id || signature)` per signature line.
    pub signatures: Vec<(String, Vec<u8>)>,
}

impl<'a> SignedNote<'a> {
    /// Splits a signed note into its text and signature lines.
    ///
    /// # Errors
    /// [`TlogError::Malformed`] when the layout is wrong.
    pub fn parse(signed: &'a str) -> Result<Self, TlogError> {
        let Some(split) = signed.rfind("\n\n") else {
            return Err(malformed("note", "no blank line before signatures"));
        };
        let text = &signed[..=split];
        check_note_text(text)?;
        let sigs = &signed[split + 2..];
        if !sigs.ends_with('\n') {
            return Err(malformed("note", "signature block must end with a newline"));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
                return Err(malformed(
                    "note",
                    "signature line must start with an em dash",
                ));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err(malformed(
                    "note",
                    "signature line needs a name and a signature",
                ));
            };
            let blob = B64
                .decode(b64)
                .map_err(|_| malformed("note", "signature is not base64"))?;
            if blob.len() < 5 {
                return Err(malformed("note", "signature too short"));
            }
            signatures.push((name.to_owned(), blob));
        }
        if signatures.is_empty() {
            return Err(malformed("note", "no signature lines"));
        }
        Ok(Self { text, signatures })
    }
}

/// A C2SP `tlog-checkpoint` body: origin, tree size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line; unique per log.
    pub origin: String,
    /// Number of leaves covered.
    pub size: u64,
    /// Merkle Tree Hash of those leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n`.
    #[must_use]
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses checkpoint note text (extension lines are ignored).
    ///
    /// # Errors
    /// [`TlogError::Malformed`] when a line is missing or invalid.
    pub fn parse(text: &str) -> Result<Self, TlogError> {
        let mut lines = text.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(malformed("checkpoint", "empty origin"));
        }
        let size_line = lines
            .next()
            .ok_or_else(|| malformed("checkpoint", "missing size"))?;
        if size_line.is_empty()
            || (size_line.len() > 1 && size_line.starts_with('0'))
            || !size_line.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(malformed("checkpoint", "size is not a decimal number"));
        }
        let size: u64 = size_line
            .parse()
            .map_err(|_| malformed("checkpoint", "size out of range"))?;
        let root_line = lines
            .next()
            .ok_or_else(|| malformed("checkpoint", "missing root"))?;
        let root_raw = B64
            .decode(root_line)
            .map_err(|_| malformed("checkpoint", "root is not base64"))?;
        let root: Hash = root_raw
            .try_into()
            .map_err(|_| malformed("checkpoint", "root is not 32 bytes"))?;
        if !text.ends_with('\n') {
            return Err(malformed("checkpoint", "must end with a newline"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Signs this checkpoint into a signed note.
    ///
    /// # Errors
    /// [`TlogError::Malformed`] when the origin holds a control character.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, TlogError> {
        signer.sign(&self.to_text())
    }

    /// Verifies a signed checkpoint note and parses it.
    ///
    /// # Errors
    /// Signature or parse failures.
    pub fn open(signed: &str, verifier: &NoteVerifier) -> Result<Self, TlogError> {
        Self::parse(verifier.verify(signed)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // golang.org/x/mod/sumdb/note, note_test.go and the package example
    // (BSD-3-Clause): Ed25519 is deterministic, so signing must reproduce
    // the published note byte for byte.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn reproduces_go_sumdb_note_vector() {
        let signer = NoteSigner::from_private_key(GO_SKEY).unwrap();
        assert_eq!(signer.to_private_key(), GO_SKEY);
        assert_eq!(signer.verifier().to_string(), GO_VKEY);
        assert_eq!(signer.sign(GO_TEXT).unwrap(), GO_NOTE);
        let verifier = NoteVerifier::parse(GO_VKEY).unwrap();
        assert_eq!(verifier.verify(GO_NOTE).unwrap(), GO_TEXT);
    }

    #[test]
    fn tampered_notes_fail() {
        let verifier = NoteVerifier::parse(GO_VKEY).unwrap();
        let edited = GO_NOTE.replace("cryptography", "cryptographY");
        assert_eq!(
            verifier.verify(&edited),
            Err(TlogError::BadSignature("PeterNeumann".into()))
        );
        let other = NoteSigner::new("PeterNeumann", &[7u8; 32]).unwrap();
        assert!(verifier.verify(&other.sign(GO_TEXT).unwrap()).is_err());
        for bad in ["", "x\n", "x\n\n", "x\n\nno dash\n", "x\n\n\u{2014} a !!\n"] {
            assert!(verifier.verify(bad).is_err(), "{bad:?}");
        }
        assert!(
            NoteVerifier::parse(
                "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            )
            .is_err()
        );
        assert!(NoteSigner::new("bad name", &[1u8; 32]).is_err());
        assert!(NoteSigner::new("a+b", &[1u8; 32]).is_err());
    }

    #[test]
    fn checkpoint_round_trip_and_rejects_garbage() {
        let signer = NoteSigner::new("log.example", &[3u8; 32]).unwrap();
        let cp = Checkpoint {
            origin: "log.example/p/t".into(),
            size: 42,
            root: [9u8; 32],
        };
        let signed = cp.sign(&signer).unwrap();
        assert_eq!(Checkpoint::open(&signed, &signer.verifier()).unwrap(), cp);
        for bad in [
            "",
            "o\n",
            "o\n01\nAAAA\n",
            "o\n-1\nAAAA\n",
            "o\n1\nnot base64\n",
            "o\n1\nAAAA\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
        assert!(signer.sign("control\u{7}\n").is_err());
    }
}
