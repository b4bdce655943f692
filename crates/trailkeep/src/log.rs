//! The log's Ed25519 signing key and checkpoint signing.
//!
//! The key is generated on first start and kept in the data directory as a
//! Go-style signer key (`PRIVATE+KEY+<name>+<id>+<base64>`) with mode 0600.
//! One key signs every tenant's checkpoints; each tenant's log is told
//! apart by its checkpoint origin `<log name>/<project>/<tenant>`.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use tlog::{Checkpoint, Hash, NoteSigner, NoteVerifier};

/// The signing identity of this server.
pub struct LogKey {
    signer: NoteSigner,
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogKey")
            .field("name", &self.signer.name())
            .finish_non_exhaustive()
    }
}

impl LogKey {
    /// A key from a Go-style signer key string.
    ///
    /// # Errors
    /// When the string is not a valid signer key.
    pub fn from_private_key(skey: &str) -> anyhow::Result<Self> {
        Ok(Self {
            signer: NoteSigner::from_private_key(skey).context("invalid log signing key")?,
        })
    }

    /// A fresh random key named `name`.
    ///
    /// # Errors
    /// When `name` is not a valid key name or there is no randomness.
    pub fn generate(name: &str) -> anyhow::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(Self {
            signer: NoteSigner::new(name, &seed)?,
        })
    }

    /// The Go-style signer key; a secret, never to be logged.
    #[must_use]
    pub fn to_private_key(&self) -> String {
        self.signer.to_private_key()
    }

    /// Loads the key at `path`, or creates one named `name` there.
    ///
    /// # Errors
    /// IO failures or a malformed key file.
    pub fn load_or_create(path: &Path, name: &str) -> anyhow::Result<Self> {
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Self::from_private_key(&text).with_context(|| format!("in {}", path.display()));
        }
        let signer = Self::generate(name)?.signer;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(signer.to_private_key().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(Self { signer })
    }

    /// The verifier key, `<name>+<hex id>+<base64 key>`.
    #[must_use]
    pub fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }

    /// The checkpoint origin of one tenant's log.
    #[must_use]
    pub fn origin(&self, project: &str, tenant: &str) -> String {
        format!(
            "{}/{}/{}",
            self.signer.name(),
            escape(project),
            escape(tenant)
        )
    }

    /// Signs the checkpoint of a tree.
    ///
    /// # Panics
    /// Never: origins are escaped so they hold no control characters.
    #[must_use]
    pub fn sign(&self, origin: String, size: u64, root: Hash) -> String {
        Checkpoint { origin, size, root }
            .sign(&self.signer)
            .expect("escaped origins are valid note text")
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so an
/// origin is one line of printable ASCII whatever the tenant is called.
#[must_use]
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = LogKey::load_or_create(&path, "log.test").unwrap();
        let b = LogKey::load_or_create(&path, "ignored").unwrap();
        assert_eq!(a.verifier(), b.verifier());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(a.origin("p", "a b/c\n"), "log.test/p/a%20b%2Fc%0A");
    }
}
