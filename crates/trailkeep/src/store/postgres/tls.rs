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
//! `verify-full`). As in libpq, `verify-ca` and `verify-full` refuse to start
//! without it. Channel binding is not offered, so SCRAM authenticates
//! without it (libpq's `channel_binding=prefer` does the same when it
//! cannot bind).

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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query;
/// every other parameter is left exactly as written.
///
/// # Errors
/// An unknown `sslmode`, badly encoded values, or a combination libpq
/// refuses too.
pub fn settings(url: &str) -> Result<Settings, TlsError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut mode = None;
    let mut roots = Roots::None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
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
            "sslrootcert" => {
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

/// Percent-decodes a URL query value (`+` stays `+`, as in libpq).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The connector for `settings`: rustls with the checks its mode asks for.
///
/// # Errors
/// An unreadable or empty root file, or a configuration rustls refuses.
pub fn connector(settings: &Settings) -> Result<MakeTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &settings.roots {
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
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
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
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, Self::Error> {
        Ok(Connect {
            name: ServerName::try_from(host.to_owned())?,
            config: self.config.clone(),
        })
    }
}

/// One TLS handshake with one host.
pub struct Connect {
    name: ServerName<'static>,
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
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(Stream)
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
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
