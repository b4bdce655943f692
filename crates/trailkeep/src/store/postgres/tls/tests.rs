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
