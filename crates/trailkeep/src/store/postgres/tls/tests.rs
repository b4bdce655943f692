use super::*;

fn ok(url: &str) -> Settings {
    settings(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[test]
fn sslmode_and_sslrootcert_are_taken_out_and_the_rest_kept_as_written() {
    let s = ok(
        "postgres://u:p%40ss@db:5432/test?options=-c%20search_path%3Dx&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=tk",
    );
    assert_eq!(
        s.url,
        "postgres://u:p%40ss@db:5432/test?options=-c%20search_path%3Dx&application_name=tk"
    );
    assert_eq!(s.mode, Mode::VerifyFull);
    assert_eq!(s.roots, Roots::File("/etc/ca.pem".into()));
    let s = ok("postgres://db/test?sslmode=require");
    assert_eq!(
        (s.url.as_str(), s.mode),
        ("postgres://db/test", Mode::Require)
    );
}

#[test]
fn the_query_is_found_and_read_as_tokio_postgres_reads_it() {
    // Keys are percent-decoded, so an encoded `sslmode` is still seen.
    assert_eq!(ok("postgres://db/t?ssl%6Dode=require").mode, Mode::Require);
    // The query starts after the credentials: a `?` in a password is not it.
    let s = ok("postgres://u:a?sslmode=disable@db/t?sslmode=require");
    assert_eq!(s.mode, Mode::Require);
    assert_eq!(s.url, "postgres://u:a?sslmode=disable@db/t");
    // The last of a repeated parameter wins; empty pairs are kept as written.
    let s = ok("postgres://db/t?sslmode=disable&&a=1&sslmode=require&");
    assert_eq!(
        (s.mode, s.url.as_str()),
        (Mode::Require, "postgres://db/t?&a=1&")
    );
    assert_eq!(ok("postgres://db/t?").url, "postgres://db/t?");
    // Bad escapes and U+0000 are refused.
    for bad in ["%+f", "%0", "re%00quire", "%ff"] {
        let e = settings(&format!("postgres://db/t?sslmode={bad}")).unwrap_err();
        assert!(matches!(e, TlsError::Encoding("sslmode")), "{bad}: {e}");
    }
    // Debug output never shows the URL, which may hold a password.
    let s = ok("postgres://u:hunter2@db/t?sslmode=require");
    assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
}

#[test]
fn only_urls_are_read() {
    let e = settings("host=db user=u sslmode=require").unwrap_err();
    assert!(matches!(e, TlsError::NotUrl), "{e}");
}

#[test]
fn hosts_decide_the_handshake_name_and_whether_tls_applies() {
    use tokio_postgres::config::Host;
    let cfg = |url: &str| config(url).unwrap().0;
    // A `hostaddr` without `host` is also the handshake's name.
    let c = cfg("postgres:///t?hostaddr=10.0.0.7&sslmode=require");
    assert_eq!(c.get_hosts(), &[Host::Tcp("10.0.0.7".into())]);
    assert_eq!(format!("{:?}", c.get_ssl_mode()), "Require");
    // Unix sockets ignore sslmode, as in libpq.
    let c = cfg("postgres://%2Frun%2Fpostgresql/t?sslmode=require");
    assert_eq!(format!("{:?}", c.get_ssl_mode()), "Disable");
    // A socket host with an address has no name to check: refused.
    let e = config("postgres://%2Frun%2Fpostgresql/t?hostaddr=10.0.0.7&sslmode=require")
        .err()
        .unwrap();
    assert!(matches!(e, TlsError::UnixWithAddress), "{e}");
    // A TCP host keeps its mode.
    let c = cfg("postgres://db/t?sslmode=verify-full&sslrootcert=system");
    assert_eq!(format!("{:?}", c.get_ssl_mode()), "Require");
}

#[test]
fn the_modes_follow_libpq() {
    assert_eq!(ok("postgres://db/t").mode, Mode::Prefer);
    for (v, m) in [
        ("disable", Mode::Disable),
        ("allow", Mode::Prefer),
        ("prefer", Mode::Prefer),
        ("require", Mode::Require),
        ("verify-ca", Mode::VerifyCa),
        ("verify-full", Mode::VerifyFull),
    ] {
        let roots = if matches!(m, Mode::VerifyCa | Mode::VerifyFull) {
            "&sslrootcert=/ca.pem"
        } else {
            ""
        };
        assert_eq!(
            ok(&format!("postgres://db/t?sslmode={v}{roots}")).mode,
            m,
            "{v}"
        );
        assert_eq!(m.ssl_mode() == SslMode::Disable, m == Mode::Disable);
    }
    // `sslrootcert=system` defaults to verify-full and allows nothing weaker.
    let s = ok("postgres://db/t?sslrootcert=system");
    assert_eq!((s.mode, s.roots), (Mode::VerifyFull, Roots::System));
    for weaker in ["disable", "prefer", "require", "verify-ca"] {
        let e = settings(&format!(
            "postgres://db/t?sslrootcert=system&sslmode={weaker}"
        ))
        .unwrap_err();
        assert!(
            matches!(e, TlsError::SystemNeedsVerifyFull(_)),
            "{weaker}: {e}"
        );
    }
}

#[test]
fn bad_settings_are_refused_without_echoing_the_url() {
    let secret = "hunter2";
    for (url, want) in [
        (
            format!("postgres://u:{secret}@db/t?sslmode=verify"),
            "sslmode must be one of",
        ),
        (
            format!("postgres://u:{secret}@db/t?sslmode=verify-full"),
            "needs sslrootcert",
        ),
        (
            format!("postgres://u:{secret}@db/t?sslmode=verify-ca"),
            "needs sslrootcert",
        ),
        (
            format!("postgres://u:{secret}@db/t?sslmode=%zz"),
            "percent-encoded",
        ),
    ] {
        let e = settings(&url).unwrap_err().to_string();
        assert!(e.contains(want), "{url}: {e}");
        assert!(!e.contains(secret), "{e}");
    }
}

#[test]
fn a_root_file_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for path in [&missing, &empty] {
        let s = ok(&format!(
            "postgres://db/t?sslmode=verify-full&sslrootcert={}",
            path.display()
        ));
        let Err(e) = connector(&s) else {
            panic!("{} was accepted", path.display());
        };
        assert!(matches!(e, TlsError::RootFile { .. }), "{e}");
    }
    // The built-in roots and the unchecked modes need no file.
    for url in [
        "postgres://db/t?sslrootcert=system",
        "postgres://db/t?sslmode=require",
    ] {
        connector(&ok(url)).unwrap();
    }
}

#[test]
fn disable_reads_no_root_file() {
    let s = ok("postgres://db/t?sslmode=disable&sslrootcert=/no/such/file.pem");
    connector(&s).unwrap();
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn channel_binding_hashes_the_certificate_with_its_signature_hash() {
    // Expected values from `openssl x509 -outform der | openssl dgst -sha…`.
    let ecdsa_sha256 = der(include_str!("../../../../tests/it/unrelated-ca.pem"));
    for (cert, want) in [
        (
            ecdsa_sha256.clone(),
            "0d78e085a28c62985286776bdb5817278d0743802ab429ab16e3e6d59bb17111",
        ),
        (
            der(include_str!("rsa-sha384.pem")),
            "c90afdd8f0d39f6bf7e066056ab22cdc4f7f6b1b6160b8a7132bf2e6c9e9e34894f458d40fa43c8015b9604f875e9142",
        ),
        (
            der(include_str!("ecdsa-sha224.pem")),
            "5022eaa78d9db49fa6a5e6bb014d4c8d011beeb7d0260d22fdd00fbd",
        ),
        (
            der(include_str!("ecdsa-sha512.pem")),
            "4e5f21432a56c30076ee701c7a23bad9f0ab67b21d549ddb73ee8f61017400eda95409073de78c34c3a1df57c8382727fdb35bd2c50512d22fb61b9f6755c7c4",
        ),
    ] {
        assert_eq!(hex(&end_point_hash(&cert).unwrap()), want);
    }
    // PostgreSQL cannot bind to Ed25519 certificates either.
    assert_eq!(end_point_hash(&der(include_str!("ed25519.pem"))), None);
    // Anything that does not parse as a certificate binds to nothing.
    for bad in [&[][..], &[0x30, 0x82, 0xff], &ecdsa_sha256[..40]] {
        assert_eq!(end_point_hash(bad), None);
    }
}

/// A server that declines TLS (answers `N` to the SSLRequest) and reports
/// whether the client went on in plaintext with a StartupMessage.
async fn declining_server() -> (String, tokio::task::JoinHandle<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = [0u8; 8];
        s.read_exact(&mut req).await.unwrap();
        assert_eq!(req, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "an SSLRequest");
        s.write_all(b"N").await.unwrap();
        let mut startup = [0u8; 8];
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            s.read_exact(&mut startup),
        )
        .await
        {
            Ok(Ok(_)) => startup[4..] == [0, 3, 0, 0],
            _ => false,
        }
    });
    (format!("postgres://u@127.0.0.1:{port}/t"), task)
}

#[tokio::test]
async fn prefer_goes_on_in_plaintext_when_tls_is_declined_and_require_stops() {
    let (url, server) = declining_server().await;
    let (cfg, tls) = config(&format!("{url}?sslmode=prefer")).unwrap();
    // The fake server never answers the startup, so the connection fails.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), cfg.connect(tls)).await;
    assert!(
        server.await.unwrap(),
        "prefer sent its StartupMessage in plaintext"
    );

    let (url, server) = declining_server().await;
    let (cfg, tls) = config(&format!("{url}?sslmode=require")).unwrap();
    let e = cfg.connect(tls).await.err().expect("require must fail");
    assert!(!server.await.unwrap(), "require sent nothing in plaintext");
    assert!(e.to_string().contains("TLS"), "{e}");
}
