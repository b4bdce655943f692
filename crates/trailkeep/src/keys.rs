//! API keys: 256 random bits, shown once, stored only as SHA-256.
//!
//! A key has ample entropy, so a fast hash is enough (a password hash
//! would cost milliseconds per request for no gain). Lookups are by digest
//! and the final comparison is constant-time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Prefix of every generated key, so leaked keys are easy to recognise.
pub const KEY_PREFIX: &str = "tk_";

/// A new random key.
///
/// # Panics
/// When the operating system has no randomness to give.
#[must_use]
pub fn generate() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS random source works");
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// The stored digest of a key.
#[must_use]
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Constant-time digest comparison.
#[must_use]
pub fn hashes_equal(a: &[u8], b: &[u8; 32]) -> bool {
    a.len() == 32 && bool::from(a.ct_eq(b))
}

/// The first few characters of a key, safe to show in listings.
#[must_use]
pub fn display_prefix(key: &str) -> String {
    let visible: String = key.chars().take(KEY_PREFIX.len() + 4).collect();
    format!("{visible}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hash_stably() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 43);
        assert!(hashes_equal(&hash_key(&a), &hash_key(&a)));
        assert!(!hashes_equal(&hash_key(&a), &hash_key(&b)));
        assert!(!display_prefix(&a).contains(&a[8..]));
    }
}
