//! The CLI against a real data directory.

use crate::support::{KEY, TestServer, event, run_cli};

#[tokio::test]
async fn keys_are_managed_offline_and_never_shown_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, key, err) = run_cli(&["keys", "create", "--project", "billing", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("tk_"));
    let (code, list, _) = run_cli(&["keys", "list", "--data-dir", d]);
    assert_eq!(code, 0);
    assert!(
        list.contains("billing") && !list.contains(&key[8..]),
        "{list}"
    );
    // The key works against a server on the same data dir.
    let s = TestServer::start_in(dir, |_| {}).await;
    let (st, _) = s.post("/v1/events", &key, &event("a", "u")).await;
    assert_eq!(st, 201);
    let d = s.dir.path().to_str().unwrap().to_owned();
    let (code, _, err) = run_cli(&["keys", "revoke", "1", "--data-dir", &d]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(&["keys", "revoke", "1", "--data-dir", &d]);
    assert!(code != 0 && err.contains("no active key"), "{err}");
    let (code, list, _) = run_cli(&["keys", "list", "--project", "billing", "--data-dir", &d]);
    assert_eq!(code, 0);
    assert!(
        !list.lines().nth(1).unwrap().trim_end().ends_with('-'),
        "revoked key shows its revocation time: {list}"
    );
}

#[tokio::test]
async fn key_public_prints_the_servers_verifier_key() {
    let s = TestServer::start().await;
    s.post("/v1/events", KEY, &event("a", "u")).await;
    let (code, out, err) = run_cli(&[
        "key",
        "public",
        "--data-dir",
        s.dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), s.verifier.to_string());
    let (_, note) = s.get_text("/v1/tenants/default/checkpoint", KEY).await;
    let v = tlog::NoteVerifier::parse(out.trim()).unwrap();
    assert_eq!(tlog::Checkpoint::open(&note, &v).unwrap().size, 1);
}

#[tokio::test]
async fn verify_proof_checks_a_saved_inclusion_proof() {
    let s = TestServer::start().await;
    let (_, r) = s.post("/v1/events", KEY, &event("a", "u")).await;
    s.post("/v1/events", KEY, &event("b", "u")).await;
    let id = r["id"].as_str().unwrap();
    let (_, proof) = s.get_text(&format!("/v1/events/{id}/proof"), KEY).await;
    let (_, leaf) = s.get_text(&format!("/v1/events/{id}"), KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let (pp, ep) = (dir.path().join("proof.json"), dir.path().join("event.json"));
    std::fs::write(&pp, &proof).unwrap();
    std::fs::write(&ep, &leaf).unwrap();
    let vkey = s.verifier.to_string();
    let (code, out, _) = run_cli(&[
        "verify",
        "--proof",
        pp.to_str().unwrap(),
        "--event",
        ep.to_str().unwrap(),
        "--key",
        &vkey,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK: leaf 0"), "{out}");
    std::fs::write(&ep, leaf.replace("\"a\"", "\"z\"")).unwrap();
    let (code, out, _) = run_cli(&[
        "verify",
        "--proof",
        pp.to_str().unwrap(),
        "--event",
        ep.to_str().unwrap(),
        "--key",
        &vkey,
    ]);
    assert!(code != 0 && out.contains("does not hash"), "{out}");
    std::fs::write(&pp, proof.replace("\"leaf_index\":0", "\"leaf_index\":1")).unwrap();
    let (code, out, _) = run_cli(&["verify", "--proof", pp.to_str().unwrap(), "--key", &vkey]);
    assert!(code != 0 && out.starts_with("FAILED"), "{out}");
}

#[tokio::test]
async fn a_second_server_cannot_open_a_data_dir_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let config = trailkeep::config::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let _first = trailkeep::Server::open(config.clone(), Some(KEY))
        .await
        .unwrap();
    let err = trailkeep::Server::open(config, Some(KEY))
        .await
        .err()
        .expect("second open fails");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn webhooks_are_managed_offline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, secret, err) = run_cli(&[
        "webhooks",
        "add",
        "http://127.0.0.1:9/hook",
        "--description",
        "ops",
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(secret.trim().starts_with("whsec_"), "{secret}");
    let (code, list, _) = run_cli(&["webhooks", "list", "--data-dir", d]);
    assert_eq!(code, 0);
    assert!(
        list.contains("http://127.0.0.1:9/hook") && !list.contains("whsec_"),
        "{list}"
    );
    let (code, _, err) = run_cli(&["webhooks", "add", "ftp://x", "--data-dir", d]);
    assert!(code != 0 && err.contains("http"), "{err}");
    let (code, _, err) = run_cli(&["webhooks", "remove", "1", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    let (code, list, _) = run_cli(&["webhooks", "list", "--data-dir", d]);
    assert_eq!((code, list.trim()), (0, ""));
    let (code, _, err) = run_cli(&["webhooks", "remove", "1", "--data-dir", d]);
    assert!(code != 0 && err.contains("no webhook"), "{err}");
}

#[test]
fn key_generate_prints_a_usable_signing_key() {
    let (code, key, err) = run_cli(&["key", "generate", "--name", "log.example"]);
    assert_eq!(code, 0, "{err}");
    let key = trailkeep::log::LogKey::from_private_key(key.trim()).unwrap();
    assert!(err.contains(&key.verifier().to_string()), "{err}");
    assert!(key.verifier().to_string().starts_with("log.example+"));
}
