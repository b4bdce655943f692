//! The verifiable log end to end: checkpoints, proofs, exports, an
//! independent signature check, concurrency and tamper detection.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tlog::Checkpoint;

use crate::support::{KEY, TestServer, run_cli};

fn hash(v: &Value) -> tlog::Hash {
    B64.decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

fn hashes(v: &Value) -> Vec<tlog::Hash> {
    v.as_array().unwrap().iter().map(hash).collect()
}

async fn ingest(s: &TestServer, tenant: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..n {
        let (st, r) = s
            .post(
                "/v1/events",
                KEY,
                &json!({"tenant": tenant, "action": format!("a{i}"), "actor": {"id": "u"}}),
            )
            .await;
        assert_eq!(st, 201, "{r}");
        out.push(r);
    }
    out
}

async fn checkpoint(s: &TestServer, tenant: &str) -> (String, Checkpoint) {
    let (st, note) = s
        .get_text(&format!("/v1/tenants/{tenant}/checkpoint"), KEY)
        .await;
    assert_eq!(st, 200, "{note}");
    let cp = Checkpoint::open(&note, &s.verifier).unwrap();
    (note, cp)
}

#[tokio::test]
async fn proofs_verify_with_a_generic_rfc6962_verifier() {
    let s = TestServer::start().await;
    let receipts = ingest(&s, "t", 13).await;
    let (_, cp13) = checkpoint(&s, "t").await;
    assert_eq!(cp13.size, 13);
    assert_eq!(cp13.origin, "trailkeep.local/default/t");
    for (i, r) in receipts.iter().enumerate() {
        let id = r["id"].as_str().unwrap();
        // The event as served is its leaf, byte for byte.
        let (_, leaf) = s.get_text(&format!("/v1/events/{id}"), KEY).await;
        assert_eq!(tlog::leaf_hash(leaf.as_bytes()), hash(&r["leaf_hash"]));
        let (st, p) = s.get(&format!("/v1/events/{id}/proof"), KEY).await;
        assert_eq!(st, 200, "{p}");
        assert_eq!(p["leaf_index"], i);
        let cp = Checkpoint::open(p["checkpoint"].as_str().unwrap(), &s.verifier).unwrap();
        assert_eq!(cp, cp13);
        tlog::verify_inclusion(
            i as u64,
            13,
            &hash(&p["leaf_hash"]),
            &hashes(&p["hashes"]),
            &cp.root,
        )
        .unwrap();
    }
    // A proof against an older tree size comes with that size's checkpoint.
    let id = receipts[3]["id"].as_str().unwrap();
    let (_, p) = s
        .get(&format!("/v1/events/{id}/proof?tree_size=5"), KEY)
        .await;
    let cp5 = Checkpoint::open(p["checkpoint"].as_str().unwrap(), &s.verifier).unwrap();
    assert_eq!(cp5.size, 5);
    tlog::verify_inclusion(
        3,
        5,
        &hash(&p["leaf_hash"]),
        &hashes(&p["hashes"]),
        &cp5.root,
    )
    .unwrap();
    for bad in ["tree_size=3", "tree_size=14", "tree_size=x"] {
        let (st, _) = s.get(&format!("/v1/events/{id}/proof?{bad}"), KEY).await;
        assert_eq!(st, 400, "{bad}");
    }
    // Consistency from 5 to 13, then more ingestion and 13 to 20.
    let (_, c) = s.get("/v1/tenants/t/consistency?from=5&to=13", KEY).await;
    tlog::verify_consistency(5, 13, &hashes(&c["hashes"]), &cp5.root, &cp13.root).unwrap();
    ingest(&s, "t", 7).await;
    let (_, cp20) = checkpoint(&s, "t").await;
    let (_, c) = s.get("/v1/tenants/t/consistency?from=13", KEY).await;
    assert_eq!(c["to"], 20);
    tlog::verify_consistency(13, 20, &hashes(&c["hashes"]), &cp13.root, &cp20.root).unwrap();
    assert!(
        tlog::verify_consistency(13, 20, &hashes(&c["hashes"]), &cp5.root, &cp20.root).is_err()
    );
    let (st, _) = s.get("/v1/tenants/t/consistency?from=21", KEY).await;
    assert_eq!(st, 400);
    let (st, _) = s.get("/v1/tenants/nope/checkpoint", KEY).await;
    assert_eq!(st, 404);
    // The export is a self-contained bundle.
    let (st, bundle) = s.get_text("/v1/tenants/t/export?format=ndjson", KEY).await;
    assert_eq!(st, 200);
    assert_eq!(bundle.lines().count(), 21);
    let v = trailkeep::export::verify_bundle(bundle.as_bytes(), &s.verifier, Some(&cp13)).unwrap();
    assert_eq!(v.events, 20);
    assert_eq!(v.checkpoint, cp20);
}

const PYTHON_CHECK: &str = r#"
import base64, hashlib, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey, Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

vkey, note_path, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
name, keyid_hex, key_b64 = vkey.split("+", 2)
raw = base64.b64decode(key_b64)
assert raw[0] == 1 and len(raw) == 33
pub = raw[1:]
assert hashlib.sha256(name.encode() + b"\n" + b"\x01" + pub).digest()[:4].hex() == keyid_hex
note = open(note_path, encoding="utf-8").read()
text, sigs = note.rsplit("\n\n", 1)
text += "\n"
ok = False
for line in sigs.strip("\n").split("\n"):
    dash, signer, sig_b64 = line.split(" ")
    assert dash == "\u2014"
    blob = base64.b64decode(sig_b64)
    if signer == name and blob[:4].hex() == keyid_hex:
        Ed25519PublicKey.from_public_bytes(pub).verify(blob[4:], text.encode())
        ok = True
assert ok, "no signature by the key"
origin, size, root = text.split("\n")[:3]
assert len(base64.b64decode(root)) == 32 and int(size) >= 0
# Now sign a note of our own for trailkeep to verify.
priv = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
mypub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
myname = "python.example"
kid = hashlib.sha256(myname.encode() + b"\n\x01" + mypub).digest()[:4]
body = "python.example/log\n3\n" + base64.b64encode(bytes(32)).decode() + "\n"
sig = priv.sign(body.encode())
signed = body + "\n\u2014 " + myname + " " + base64.b64encode(kid + sig).decode() + "\n"
vk = myname + "+" + kid.hex() + "+" + base64.b64encode(b"\x01" + mypub).decode()
open(out_path, "w", encoding="utf-8").write(vk + "\n" + signed)
print("python verified", origin, size)
"#;

#[tokio::test]
async fn an_independent_ed25519_implementation_agrees_both_ways() {
    let s = TestServer::start().await;
    ingest(&s, "indep", 4).await;
    let (note, _) = checkpoint(&s, "indep").await;
    let dir = tempfile::tempdir().unwrap();
    let note_path = dir.path().join("cp.txt");
    let out_path = dir.path().join("py.txt");
    std::fs::write(&note_path, &note).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            PYTHON_CHECK,
            &s.verifier.to_string(),
            note_path.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ])
        .output()
        .expect("python3 runs (the CI installs the cryptography package)");
    assert!(
        out.status.success(),
        "python rejected trailkeep's checkpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let produced = std::fs::read_to_string(&out_path).unwrap();
    let (vkey, signed) = produced.split_once('\n').unwrap();
    let verifier = tlog::NoteVerifier::parse(vkey).unwrap();
    let cp = Checkpoint::open(signed, &verifier).unwrap();
    assert_eq!(
        (cp.origin.as_str(), cp.size, cp.root),
        ("python.example/log", 3, [0u8; 32])
    );
    assert!(Checkpoint::open(&signed.replace("/log", "/lag"), &verifier).is_err());
    // And python rejects a checkpoint whose body was altered.
    std::fs::write(&note_path, note.replacen("\n4\n", "\n5\n", 1)).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            PYTHON_CHECK,
            &s.verifier.to_string(),
            note_path.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "python accepted an altered checkpoint"
    );
}

#[tokio::test]
async fn concurrent_ingestion_into_one_tenant_is_contiguous_and_verifies() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25 {
                let (st, r) = s.post("/v1/events", KEY, &json!({"tenant": "hot", "action": format!("w{t}.{i}"), "actor": {"id": "u"}})).await;
                assert_eq!(st, 201);
                got.push(r["index"].as_u64().unwrap());
            }
            got
        }));
    }
    let mut indexes = Vec::new();
    for t in tasks {
        indexes.extend(t.await.unwrap());
    }
    indexes.sort_unstable();
    assert_eq!(indexes, (0..400).collect::<Vec<u64>>());
    let (_, bundle) = s.get_text("/v1/tenants/hot/export", KEY).await;
    let v = trailkeep::export::verify_bundle(bundle.as_bytes(), &s.verifier, None).unwrap();
    assert_eq!(v.events, 400);
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let dest = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                std::fs::create_dir(&dest).unwrap();
                copy(&entry.path(), &dest);
            } else {
                std::fs::copy(entry.path(), dest).unwrap();
            }
        }
    }
    let to = tempfile::tempdir().unwrap();
    copy(from, to.path());
    to
}

fn sql(dir: &Path, statements: &str) {
    let conn = rusqlite::Connection::open(dir.join("trailkeep.db")).unwrap();
    conn.execute_batch(statements).unwrap();
}

/// Runs fsck and export + verify on a data dir; returns their outputs.
fn fsck_and_verify(dir: &Path, vkey: &str, trusted: Option<&Path>) -> (i32, String, i32, String) {
    let d = dir.to_str().unwrap();
    let (fsck_code, fsck_out, _) = run_cli(&["fsck", "--data-dir", d]);
    let bundle = dir.join("bundle.ndjson");
    let (code, _, err) = run_cli(&[
        "export",
        "--tenant",
        "t",
        "--output",
        bundle.to_str().unwrap(),
        "--data-dir",
        d,
    ]);
    assert_eq!(code, 0, "export failed: {err}");
    let mut args = vec!["verify", bundle.to_str().unwrap(), "--key", vkey];
    if let Some(t) = trusted {
        args.extend(["--checkpoint", t.to_str().unwrap()]);
    }
    let (verify_code, verify_out, _) = run_cli(&args);
    (fsck_code, fsck_out, verify_code, verify_out)
}

#[tokio::test]
async fn tampering_is_caught_by_fsck_and_verify_naming_the_index() {
    let s = TestServer::start().await;
    ingest(&s, "t", 13).await;
    let (old_note, _) = checkpoint(&s, "t").await;
    let vkey = s.verifier.to_string();
    let dir = s.stop().await;
    let trusted = dir.path().join("trusted-checkpoint.txt");
    std::fs::write(&trusted, &old_note).unwrap();

    let (fc, fo, vc, vo) = fsck_and_verify(dir.path(), &vkey, Some(&trusted));
    assert_eq!((fc, vc), (0, 0), "pristine store must pass: {fo} {vo}");

    let edited = copy_dir(dir.path());
    sql(
        edited.path(),
        "UPDATE events SET leaf = CAST(replace(CAST(leaf AS TEXT), '\"a3\"', '\"zz\"') AS BLOB) WHERE idx = 3",
    );
    let (fc, fo, vc, vo) = fsck_and_verify(edited.path(), &vkey, None);
    assert!(
        fc != 0 && fo.contains("index 3: event payload does not match"),
        "{fo}"
    );
    assert!(
        vc != 0 && vo.contains("index 3: event payload does not match"),
        "{vo}"
    );

    let deleted = copy_dir(dir.path());
    sql(deleted.path(), "DELETE FROM events WHERE idx = 5");
    let (fc, fo, vc, vo) = fsck_and_verify(deleted.path(), &vkey, None);
    assert!(fc != 0 && fo.contains("index 5"), "{fo}");
    assert!(vc != 0 && vo.contains("index 5: event missing"), "{vo}");

    let swapped = copy_dir(dir.path());
    sql(
        swapped.path(),
        "UPDATE events SET idx = -1 WHERE idx = 2; UPDATE events SET idx = 2 WHERE idx = 4; UPDATE events SET idx = 4 WHERE idx = -1;",
    );
    let (fc, fo, vc, vo) = fsck_and_verify(swapped.path(), &vkey, None);
    assert!(fc != 0 && fo.contains("index 2"), "{fo}");
    assert!(vc != 0 && vo.contains("index 2"), "{vo}");

    // The head rolled back while the events stay: fsck sees the mismatch.
    let head_back = copy_dir(dir.path());
    sql(head_back.path(), "UPDATE tenants SET size = 8");
    let (fc, fo, _, _) = fsck_and_verify(head_back.path(), &vkey, None);
    assert!(
        fc != 0 && fo.contains("tenant head says 8 events, 13 found"),
        "{fo}"
    );

    // A whole-log rollback is self-consistent, so only an earlier checkpoint
    // exposes it: verify against it fails, as does a consistency proof.
    let rolled = copy_dir(dir.path());
    let root8 = {
        let conn = rusqlite::Connection::open(rolled.path().join("trailkeep.db")).unwrap();
        let mut leaves = conn
            .prepare("SELECT leaf FROM events WHERE idx < 8 ORDER BY idx")
            .unwrap();
        let mut f = tlog::Frontier::empty();
        for leaf in leaves.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
            f.append(tlog::leaf_hash(&leaf.unwrap()));
        }
        f.root()
    };
    sql(
        rolled.path(),
        &format!(
            "DELETE FROM events WHERE idx >= 8; UPDATE tenants SET size = 8, root = X'{}';",
            root8.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    );
    let (fc, fo, vc, vo) = fsck_and_verify(rolled.path(), &vkey, Some(&trusted));
    assert_eq!(fc, 0, "a consistent rollback passes fsck: {fo}");
    assert!(vc != 0 && vo.contains("index 8: log rolled back"), "{vo}");
    let s = TestServer::start_in(rolled, |_| {}).await;
    let (st, _) = s.get("/v1/tenants/t/consistency?from=13", KEY).await;
    assert_eq!(st, 400, "no consistency proof can go back from 13 to 8");
}

fn count(dir: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("trailkeep.db")).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// False (after saying why) when the tests run on PostgreSQL, which has no
/// journal, tail or leaf compression.
fn sqlite_only(why: &str) -> bool {
    let pg = std::env::var("TRAILKEEP_TEST_STORE").as_deref() == Ok("postgres");
    if pg {
        println!("SQLite only: {why}");
    }
    !pg
}

/// Waits (at most 20 s) until the database holds `n` folded events.
async fn wait_folded(s: &TestServer, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while count(s.dir.path(), "events") < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the fold did not catch up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sets every fold trigger but a full tail far off.
fn hold_fold(c: &mut trailkeep::config::Config) {
    c.commit.fold_at_events = 1_000_000;
    c.commit.fold_interval_ms = 3_600_000;
    c.commit.fold_idle_ms = 3_600_000;
}

/// Tree nodes stored with the events (32 bytes each in `events.nodes`).
fn stored_nodes(dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("trailkeep.db")).unwrap();
    conn.query_row("SELECT sum(length(nodes)) / 32 FROM events", [], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Bytes in the journal's segment files (`<db>.journal/*.seg`).
fn journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("trailkeep.db.journal"))
        .map(|entries| entries.map(|e| e.unwrap().metadata().unwrap().len()).sum())
        .unwrap_or(0)
}

/// SQLite acknowledges into its journal and the in-memory tail, and folds
/// into the database later: with the fold held off, every read (point
/// reads, proofs, exports and listings) is answered from the tail, and the
/// offline tools (after a crash) and a clean stop fold what is left behind.
#[tokio::test]
async fn acknowledged_events_are_readable_before_they_are_folded() {
    if !sqlite_only("PostgreSQL has no tail") {
        return;
    }
    let s = TestServer::start_with(hold_fold).await;
    let receipts = ingest(&s, "t", 13).await;
    assert_eq!(count(s.dir.path(), "events"), 0);
    assert!(
        journal_bytes(s.dir.path()) > 13 * 100,
        "acknowledged events are journaled"
    );
    let (_, cp13) = checkpoint(&s, "t").await;
    for (i, r) in receipts.iter().enumerate() {
        let id = r["id"].as_str().unwrap();
        let (st, leaf) = s.get_text(&format!("/v1/events/{id}"), KEY).await;
        assert_eq!(st, 200);
        assert_eq!(tlog::leaf_hash(leaf.as_bytes()), hash(&r["leaf_hash"]));
        let (st, p) = s.get(&format!("/v1/events/{id}/proof"), KEY).await;
        assert_eq!(st, 200, "{p}");
        tlog::verify_inclusion(
            i as u64,
            13,
            &hash(&p["leaf_hash"]),
            &hashes(&p["hashes"]),
            &cp13.root,
        )
        .unwrap();
    }
    let (_, bundle) = s.get_text("/v1/tenants/t/export", KEY).await;
    let v = trailkeep::export::verify_bundle(bundle.as_bytes(), &s.verifier, None).unwrap();
    assert_eq!(v.events, 13);
    assert_eq!(
        count(s.dir.path(), "events"),
        0,
        "reads must not need a fold"
    );

    // Listings merge the tail with the folded events: still no fold needed.
    let listed = s.list_all("tenant=t", KEY).await;
    assert_eq!(listed.len(), 13);
    let (_, page) = s.get("/v1/events?tenant=t&action=a3", KEY).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(count(s.dir.path(), "events"), 0);

    // More appends extend the tree from tail nodes.
    let more = ingest(&s, "t", 7).await;
    assert_eq!(count(s.dir.path(), "events"), 0);
    let (_, cp20) = checkpoint(&s, "t").await;
    let (_, c) = s.get("/v1/tenants/t/consistency?from=13", KEY).await;
    tlog::verify_consistency(13, 20, &hashes(&c["hashes"]), &cp13.root, &cp20.root).unwrap();
    let id = more[6]["id"].as_str().unwrap();
    let (_, p) = s.get(&format!("/v1/events/{id}/proof"), KEY).await;
    tlog::verify_inclusion(
        19,
        20,
        &hash(&p["leaf_hash"]),
        &hashes(&p["hashes"]),
        &cp20.root,
    )
    .unwrap();

    // Leave events in the journal as a crash would: a consistent copy of the
    // database and the journal taken while serving, with the signing key.
    let crashed = tempfile::tempdir().unwrap();
    rusqlite::Connection::open(s.dir.path().join("trailkeep.db"))
        .unwrap()
        .execute(
            "VACUUM INTO ?1",
            [crashed.path().join("trailkeep.db").to_str().unwrap()],
        )
        .unwrap();
    std::fs::copy(
        s.dir.path().join("log-signing.key"),
        crashed.path().join("log-signing.key"),
    )
    .unwrap();
    let journal = crashed.path().join("trailkeep.db.journal");
    std::fs::create_dir(&journal).unwrap();
    for entry in std::fs::read_dir(s.dir.path().join("trailkeep.db.journal")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), journal.join(entry.file_name())).unwrap();
    }
    assert_eq!(count(crashed.path(), "events"), 0);
    let vkey = std::fs::read_to_string(s.dir.path().join("log-signing.key")).unwrap();
    let vkey = tlog::NoteSigner::from_private_key(&vkey)
        .unwrap()
        .verifier()
        .to_string();
    let (fsck_code, fsck_out, verify_code, verify_out) =
        fsck_and_verify(crashed.path(), &vkey, None);
    assert_eq!(fsck_code, 0, "{fsck_out}");
    assert_eq!(verify_code, 0, "{verify_out}");
    assert_eq!(
        journal_bytes(crashed.path()),
        0,
        "the offline tools fold the journal"
    );
    assert_eq!(count(crashed.path(), "events"), 20);
    // Complete subtrees of 20 leaves: 20 + 10 + 5 + 2 + 1.
    assert_eq!(stored_nodes(crashed.path()), 38);
    // A clean stop folds everything, and the tree extends from folded nodes.
    let dir = s.stop().await;
    assert_eq!(journal_bytes(dir.path()), 0);
    assert_eq!(count(dir.path(), "events"), 20);
    assert_eq!(stored_nodes(dir.path()), 38);
    let s = TestServer::start_in(dir, |_| {}).await;
    ingest(&s, "t", 1).await;
    let (_, cp21) = checkpoint(&s, "t").await;
    let (_, c) = s.get("/v1/tenants/t/consistency?from=20", KEY).await;
    tlog::verify_consistency(20, 21, &hashes(&c["hashes"]), &cp20.root, &cp21.root).unwrap();
    assert_eq!(s.list_all("tenant=t", KEY).await.len(), 21);
}

/// `commit.max_unfolded_events` bounds the tail: once that many events wait,
/// the writer has the fold run before it appends more, even when every
/// other fold trigger is far off.
#[tokio::test]
async fn a_full_tail_is_folded_before_more_is_appended() {
    if !sqlite_only("PostgreSQL has no tail") {
        return;
    }
    let s = TestServer::start_with(|c| {
        hold_fold(c);
        c.commit.max_unfolded_events = 4;
    })
    .await;
    ingest(&s, "t", 3).await;
    assert_eq!(
        count(s.dir.path(), "events"),
        0,
        "under the limit nothing folds"
    );
    ingest(&s, "t", 2).await;
    // The fourth event filled the tail, so the fifth waited for a fold.
    assert_eq!(count(s.dir.path(), "events"), 4);
    ingest(&s, "t", 5).await;
    assert_eq!(count(s.dir.path(), "events"), 8);
    let listed = s.list_all("tenant=t", KEY).await;
    assert_eq!(listed.len(), 10);
}

/// Once enough events are folded, SQLite trains a zstd dictionary and
/// stores later leaves compressed; every read, the export, `verify` and
/// `fsck` still see the exact leaf bytes that were hashed.
#[tokio::test]
async fn compressed_leaves_read_back_exactly() {
    if !sqlite_only("PostgreSQL stores leaves as they are") {
        return;
    }
    let s = TestServer::start().await;
    let batch = |k: usize| {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"tenant": "t", "action": format!("user.a{}", i % 17), "actor": {"id": format!("u{}", (k * 1000 + i) % 97), "name": "Ann Lee"}, "description": format!("event {k} {i}"), "tags": ["web"], "metadata": {"n": i}}))
            .collect();
        json!({ "events": events })
    };
    let mut receipts = Vec::new();
    for k in 0..7 {
        let (st, r) = s.post("/v1/events/batch", KEY, &batch(k)).await;
        assert_eq!(st, 201, "{r}");
        receipts.extend(r["events"].as_array().unwrap().iter().cloned());
        if k == 4 {
            // Let the fold pass the training threshold before the last batches.
            wait_folded(&s, 5000).await;
        }
    }
    let dir = s.stop().await;
    let conn = rusqlite::Connection::open(dir.path().join("trailkeep.db")).unwrap();
    let packed: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE substr(leaf, 1, 4) = x'28b52ffd'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let bytes: (i64, i64) = conn
        .query_row(
            "SELECT sum(length(leaf)), count(*) FROM events WHERE substr(leaf, 1, 4) = x'28b52ffd'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(conn);
    assert!(
        packed >= 1000,
        "the last batches are stored compressed ({packed})"
    );
    assert!(
        bytes.0 < bytes.1 * 300,
        "compressed leaves are small: {bytes:?}"
    );

    let s = TestServer::start_in(dir, |_| {}).await;
    for r in receipts.iter().step_by(97) {
        let id = r["id"].as_str().unwrap();
        let (st, leaf) = s.get_text(&format!("/v1/events/{id}"), KEY).await;
        assert_eq!(st, 200);
        assert_eq!(tlog::leaf_hash(leaf.as_bytes()), hash(&r["leaf_hash"]));
    }
    let (_, page) = s.get("/v1/events?actor=u5&limit=100", KEY).await;
    assert!(page["data"].as_array().unwrap().len() > 50, "{page}");
    let (_, bundle) = s.get_text("/v1/tenants/t/export", KEY).await;
    let v = trailkeep::export::verify_bundle(bundle.as_bytes(), &s.verifier, None).unwrap();
    assert_eq!(v.events, 7000);
    let dir = s.stop().await;
    let (code, out, err) = run_cli(&["fsck", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "fsck: {out} {err}");
}

/// `commit.max_frame_bytes` closes a group's journal frame once it holds
/// that many leaf bytes; the jobs left wait for the next group, in order,
/// and every one is stored at the index it was acknowledged with.
#[tokio::test]
async fn a_full_frame_leaves_the_next_jobs_to_the_next_group() {
    if !sqlite_only("PostgreSQL has no journal") {
        return;
    }
    let s = TestServer::start_with(|c| c.commit.max_frame_bytes = 1).await;
    let bodies: Vec<Value> = (0..40)
        .map(|i| json!({"tenant": "t", "action": format!("a{i}"), "actor": {"id": "u"}}))
        .collect();
    let posts = bodies.iter().map(|b| s.post("/v1/events", KEY, b));
    let receipts: Vec<(u16, Value)> = futures_util::future::join_all(posts).await;
    let mut indexes: Vec<u64> = receipts
        .iter()
        .map(|(st, r)| {
            assert_eq!(*st, 201, "{r}");
            r["index"].as_u64().unwrap()
        })
        .collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..40).collect::<Vec<u64>>());
    let metrics = s.get_text("/metrics", KEY).await.1;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {metrics}"))
    };
    // Each group held one job of one event.
    assert_eq!(
        value("trailkeep_commit_batch_events_sum"),
        value("trailkeep_commit_batch_events_count")
    );
    let (_, bundle) = s.get_text("/v1/tenants/t/export", KEY).await;
    let v = trailkeep::export::verify_bundle(bundle.as_bytes(), &s.verifier, None).unwrap();
    assert_eq!(v.events, 40);
}

/// On SQLite, proofs read tree nodes of level 8 and above from disk once and
/// from memory afterwards. Overwriting such a node's row under the running
/// server does not change its proofs; after a restart, which empties the
/// cache, the same proof is read from the damaged row and fails.
#[tokio::test]
async fn upper_tree_nodes_are_read_from_disk_once() {
    if !sqlite_only("PostgreSQL has no node cache") {
        return;
    }
    let s = TestServer::start().await;
    let events: Vec<Value> = (0..600)
        .map(|i| json!({"tenant": "t", "action": format!("a{i}"), "actor": {"id": "u"}}))
        .collect();
    let (st, r) = s
        .post("/v1/events/batch", KEY, &json!({ "events": events }))
        .await;
    assert_eq!(st, 201, "{r}");
    let id = r["events"][300]["id"].as_str().unwrap().to_owned();
    wait_folded(&s, 600).await;
    let (_, cp) = checkpoint(&s, "t").await;
    assert_eq!(cp.size, 600);
    let proof = |p: &Value| {
        tlog::verify_inclusion(
            300,
            600,
            &hash(&p["leaf_hash"]),
            &hashes(&p["hashes"]),
            &cp.root,
        )
    };
    let path = format!("/v1/events/{id}/proof");
    let (st, first) = s.get(&path, KEY).await;
    assert_eq!(st, 200, "{first}");
    proof(&first).unwrap();
    // Leaf 300's proof holds node (8, 0), the subtree of leaves 0..256,
    // stored with leaf 255 at bytes 256..288 of its `nodes`.
    {
        let conn = rusqlite::Connection::open(s.dir.path().join("trailkeep.db")).unwrap();
        let find =
            "FROM events WHERE idx = 255 AND tenant_id = (SELECT id FROM tenants WHERE name = 't')";
        let mut nodes: Vec<u8> = conn
            .query_row(&format!("SELECT nodes {find}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            nodes.len(),
            9 * 32,
            "leaf 255 completes nodes up to level 8"
        );
        nodes[256..288].fill(0);
        let changed = conn
            .execute(
                &format!("UPDATE events SET nodes = ?1 WHERE rowid = (SELECT rowid {find})"),
                [nodes],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let (st, again) = s.get(&path, KEY).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["hashes"], first["hashes"]);
    proof(&again).unwrap();
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    let (st, cold) = s.get(&path, KEY).await;
    assert_eq!(st, 200, "{cold}");
    assert!(
        proof(&cold).is_err(),
        "the damaged row was not what the restarted server read"
    );
}
