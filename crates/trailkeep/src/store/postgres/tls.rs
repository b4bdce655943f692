//! TLS for PostgreSQL connections: libpq's `sslmode` and `sslrootcert` URL
//! parameters, carried out with rustls (the TLS stack the webhook client
//! already uses), so the URL a hosted PostgreSQL hands out works as it is.
//!
//! | `sslmode` | TLS | certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | – |
//! | `allow`, `prefer` (the default) | when the server offers it | no, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `require` | always | no, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert`, and the host name |
//!
//! `sslrootcert` is a PEM file of trusted certificates, or `system` for the
//! Mozilla roots built into the binary (which, as in libpq, asks for
//! `verify-full`). As in libpq, a `hostaddr` without `host` is the name the
//! certificate is checked against, and `sslmode` is ignored for Unix
//! sockets. Where this differs from libpq, it is stricter or simpler:
//! - `allow` tries TLS first, like `prefer` (libpq tries plaintext first);
//! - `prefer` falls back to plaintext only when the server declines TLS, not
//!   after a failed handshake;
//! - a `sslrootcert` file that cannot be read is an error in every mode but
//!   `disable` (libpq skips a missing file unless it must verify);
//! - nothing is read from `~/.postgresql/` or `PGSSL*` variables, so
//!   `verify-ca` and `verify-full` need `sslrootcert`;
//! - the host name is matched against the certificate's subject alternative
//!   names only, never its common name;
//! - a Unix-socket `host` together with `hostaddr` is refused unless
//!   `sslmode=disable`, and a list mixing socket and TCP hosts applies
//!   `require` to the sockets too;
//! - only `postgres://` and `postgresql://` URLs are read, not `key=value`
//!   strings;
//! - no client certificate (`sslcert`, `sslkey`) is sent.
//!
//! Channel binding (`tls-server-end-point`, RFC 5929) is offered for
//! certificates signed with RSA PKCS#1 or ECDSA, the ones PostgreSQL can bind
//! to, so `channel_binding=require` works with SCRAM. ALPN names
//! `postgresql`, as libpq 17 does.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// How a connection URL asks for TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it (`allow` and `prefer`).
    Prefer,
    /// TLS always.
    Require,
    /// TLS always, the server's chain checked against the roots.
    VerifyCa,
    /// TLS always, the chain and the host name checked.
    VerifyFull,
}

/// Where the trusted roots come from (libpq's `sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// None given.
    None,
    /// The Mozilla roots built into the binary (`sslrootcert=system`).
    System,
    /// A PEM file of certificates.
    File(String),
}

/// A URL's TLS settings and the URL without them, for `tokio_postgres`.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// The URL with `sslmode` and `sslrootcert` taken out.
    pub url: String,
    /// The mode asked for.
    pub mode: Mode,
    /// The roots asked for.
    pub roots: Roots,
}

/// Why a URL's TLS settings cannot be used. It never holds the URL, which
/// may carry a password.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `sslmode` has a value libpq does not know.
    #[error(
        "sslmode must be one of disable, allow, prefer, require, verify-ca or verify-full, not {0:?}"
    )]
    Mode(String),
    /// A certificate check was asked for without roots to check against.
    #[error("sslmode={0} needs sslrootcert=<PEM file> or sslrootcert=system")]
    NoRoots(&'static str),
    /// `sslrootcert=system` with any mode but `verify-full`.
    #[error("sslrootcert=system needs sslmode=verify-full, not {0}")]
    SystemNeedsVerifyFull(&'static str),
    /// The root file could not be read or holds no certificate.
    #[error("sslrootcert {path}: {why}")]
    RootFile {
        /// The file named.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// A parameter is not percent-encoded properly.
    #[error("the {0} parameter is not valid percent-encoded UTF-8")]
    Encoding(&'static str),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// A Unix-socket `host` with a `hostaddr`: no name for the handshake.
    #[error(
        "a Unix-socket host with hostaddr cannot use TLS; give a host name, or sslmode=disable"
    )]
    UnixWithAddress,
    /// Not a `postgres://` or `postgresql://` URL.
    #[error("TLS settings are read from postgres:// or postgresql:// URLs only")]
    NotUrl,
    /// `tokio_postgres` refused the rest of the URL.
    #[error("invalid PostgreSQL URL")]
    Url(#[source] tokio_postgres::Error),
}

impl std::fmt::Debug for Settings {
    /// Leaves the URL out: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("mode", &self.mode)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The mode `tokio_postgres` negotiates with.
    #[must_use]
    pub fn ssl_mode(self) -> SslMode {
        match self {
            Self::Disable => SslMode::Disable,
            Self::Prefer => SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => SslMode::Require,
        }
    }
}

/// The `tokio_postgres` configuration and TLS connector for `url`.
///
/// # Errors
/// See [`settings`] and [`connector`], and a URL `tokio_postgres` refuses.
pub fn config(url: &str) -> Result<(tokio_postgres::Config, MakeTls), TlsError> {
    let settings = settings(url)?;
    let tls = connector(&settings)?;
    let mut config: tokio_postgres::Config = settings.url.parse().map_err(TlsError::Url)?;
    let hosts = config.get_hosts();
    let unix = hosts.iter().any(|h| matches!(h, Host::Unix(_)));
    let tcp = hosts.iter().any(|h| matches!(h, Host::Tcp(_)));
    let addrs = config.get_hostaddrs().to_vec();
    if hosts.is_empty() {
        // A `hostaddr` without `host`: `tokio_postgres` connects to the
        // addresses either way, and so has them as names for the handshake,
        // as libpq does.
        for a in addrs {
            config.host(a.to_string());
        }
    } else if unix && !addrs.is_empty() && settings.mode != Mode::Disable {
        return Err(TlsError::UnixWithAddress);
    }
    // libpq ignores `sslmode` on Unix sockets, where the server never
    // offers TLS.
    let mode = if unix && !tcp {
        SslMode::Disable
    } else {
        settings.mode.ssl_mode()
    };
    config.ssl_mode(mode);
    Ok((config, tls))
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query;
/// every other parameter is left exactly as written. The query is found as
/// `tokio_postgres` finds it: at the first `?` after the first `@`.
///
/// # Errors
/// An unknown `sslmode`, badly encoded values, or a combination libpq
/// refuses too.
pub fn settings(url: &str) -> Result<Settings, TlsError> {
    let after_scheme = ["postgres://", "postgresql://"]
        .iter()
        .find(|p| url.starts_with(*p))
        .ok_or(TlsError::NotUrl)?
        .len();
    let after_creds = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    let (base, query) = match url[after_creds..].find('?') {
        Some(i) => (&url[..after_creds + i], Some(&url[after_creds + i + 1..])),
        None => (url, None),
    };
    let mut mode = None;
    let mut roots = Roots::None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // `tokio_postgres` decodes keys too: `ssl%6Dode` is `sslmode`.
        match decode(key).as_deref() {
            Some("sslmode") => {
                let v = decode(value).ok_or(TlsError::Encoding("sslmode"))?;
                mode = Some(match v.as_str() {
                    "disable" => Mode::Disable,
                    "allow" | "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    _ => return Err(TlsError::Mode(v)),
                });
            }
            Some("sslrootcert") => {
                let v = decode(value).ok_or(TlsError::Encoding("sslrootcert"))?;
                roots = if v == "system" {
                    Roots::System
                } else {
                    Roots::File(v)
                };
            }
            _ => kept.push(pair),
        }
    }
    let mode = match (mode, &roots) {
        // libpq: `sslrootcert=system` makes `verify-full` the default.
        (None, Roots::System) => Mode::VerifyFull,
        (None, _) => Mode::Prefer,
        (Some(m), _) => m,
    };
    if roots == Roots::System && mode != Mode::VerifyFull {
        return Err(TlsError::SystemNeedsVerifyFull(mode.name()));
    }
    if roots == Roots::None && matches!(mode, Mode::VerifyCa | Mode::VerifyFull) {
        return Err(TlsError::NoRoots(mode.name()));
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(Settings { url, mode, roots })
}

/// Percent-decodes a URL query part (`+` stays `+`, as in libpq); `None`
/// for a bad escape, invalid UTF-8 or U+0000.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let digit = |c: u8| (c as char).to_digit(16);
            out.push(u8::try_from(digit(hex[0])? * 16 + digit(hex[1])?).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.contains('\0'))
}

/// The connector for `settings`: rustls with the checks its mode asks for.
///
/// # Errors
/// An unreadable or empty root file, or a configuration rustls refuses.
pub fn connector(settings: &Settings) -> Result<MakeTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &settings.roots {
        _ if settings.mode == Mode::Disable => None,
        Roots::None => None,
        Roots::System => Some(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
        Roots::File(path) => Some(root_file(path)?),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, roots) {
        (Mode::Disable, _) | (Mode::Prefer | Mode::Require, None) => Arc::new(Unchecked {
            provider: provider.clone(),
        }),
        (Mode::VerifyCa | Mode::VerifyFull, None) => {
            return Err(TlsError::NoRoots(settings.mode.name()));
        }
        (mode, Some(roots)) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?;
            if mode == Mode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeTls {
        config: Arc::new(config),
    })
}

fn root_file(path: &str) -> Result<RootCertStore, TlsError> {
    let err = |why: String| TlsError::RootFile {
        path: path.to_owned(),
        why,
    };
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        store.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(err("holds no certificate".into()));
    }
    Ok(store)
}

/// `prefer` and `require` without roots, as in libpq: the connection is
/// encrypted and the handshake signed by the certificate's key, but who
/// holds the certificate is not checked.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must reach a trusted root; the name it was issued
/// for is not compared with the host. The chain is checked before the name,
/// so a name mismatch means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Makes rustls connections for `tokio_postgres`, one per host.
#[derive(Clone)]
pub struct MakeTls {
    config: Arc<ClientConfig>,
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = std::convert::Infallible;

    /// `host` is empty for Unix sockets and a `hostaddr` without `host`,
    /// where `tokio_postgres` then never asks for a handshake; the name is
    /// checked at the handshake.
    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, Self::Error> {
        Ok(Connect {
            name: ServerName::try_from(host.to_owned()).ok(),
            config: self.config.clone(),
        })
    }
}

/// One TLS handshake with one host.
pub struct Connect {
    name: Option<ServerName<'static>>,
    config: Arc<ClientConfig>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.ok_or_else(|| {
                io::Error::other("the host is not a valid name or address for TLS")
            })?;
            tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map(Stream)
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn
            .peer_certificates()
            .and_then(<[_]>::first)
            .and_then(|c| end_point_hash(c))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point` data: the server certificate hashed
/// with the hash of its signature algorithm (SHA-224 to SHA-512; SHA-256 for
/// MD5 and SHA-1), as PostgreSQL computes it. `None` for algorithms it
/// cannot bind to (RSA-PSS, Ed25519) or a certificate that does not parse.
fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let oid = signature_oid(der)?;
    let hash = match oid {
        _ if oid.starts_with(RSA) && oid.len() == RSA.len() + 1 => match oid[RSA.len()] {
            0x04 | 0x05 | 0x0b => 256, // MD5, SHA-1, SHA-256 with RSA
            0x0c => 384,
            0x0d => 512,
            0x0e => 224,
            _ => return None,
        },
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01] => 256, // ecdsa-with-SHA1
        _ if oid.starts_with(ECDSA) && oid.len() == ECDSA.len() + 2 && oid[ECDSA.len()] == 0x03 => {
            match oid[ECDSA.len() + 1] {
                0x01 => 224,
                0x02 => 256,
                0x03 => 384,
                0x04 => 512,
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(match hash {
        224 => Sha224::digest(der).to_vec(),
        256 => Sha256::digest(der).to_vec(),
        384 => Sha384::digest(der).to_vec(),
        _ => Sha512::digest(der).to_vec(),
    })
}

/// The OID of a DER certificate's `signatureAlgorithm`: the second member
/// of `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, .. }`.
fn signature_oid(der: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, _tbs, rest) = tlv(cert)? else {
        return None;
    };
    let (0x30, alg, _) = tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = tlv(alg)? else {
        return None;
    };
    Some(oid)
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (usize::from(first), b)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &b[n..])
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
