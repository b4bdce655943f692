use super::*;
use crate::model::{Actor, ActorType, Context, Time};

fn event(tenant: &str, index: u64, tags: &[&str]) -> Event {
    Event {
        v: 1,
        id: Uuid::now_v7(),
        tenant: tenant.into(),
        index,
        received_at: Time::from_micros(1_000_000),
        occurred_at: Time::from_micros(900_000),
        action: "user.login".into(),
        actor: Actor {
            id: "ann".into(),
            kind: ActorType::User,
            name: Some("Ann Lee".into()),
            email: None,
            extra: serde_json::Map::new(),
        },
        targets: vec![],
        result: Some(Outcome::Failure),
        description: Some("tried".into()),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        context: Context::default(),
        metadata: serde_json::Map::new(),
        source: None,
    }
}

/// A frame of `n` events of tenant 7 from `first_seq` on.
pub(in crate::store::sqlite) fn frame(first_seq: i64, n: u64) -> Frame {
    let events = (0..n)
        .map(|i| {
            let e = event("acme", i, &["web"]);
            let leaf = e.leaf();
            let nodes = vec![tlog::leaf_hash(&leaf), [i as u8; 32]];
            TailEvent::new(
                first_seq + i as i64,
                1,
                7,
                "acme".into(),
                i == 0,
                &e,
                leaf,
                nodes,
            )
        })
        .collect();
    Frame {
        tenants: vec![NewTenant {
            id: 7,
            project: 1,
            name: "acme".into(),
            created_at: 5,
        }],
        events,
        heads: vec![Head {
            tenant_id: 7,
            project: 1,
            name: "acme".into(),
            size: n,
            root: [9; 32],
        }],
        idempotency: vec![IdemRecord {
            project: 1,
            key: "k-1".into(),
            request_hash: [3; 32],
            status: 201,
            body: b"{}".to_vec(),
            created_at: 6,
        }],
    }
}

fn write(dir: &Path, frames: &[Frame]) {
    let mut j = Journal::open(dir).unwrap();
    for f in frames {
        j.append(f.events[0].seq, &f.encode()).unwrap();
    }
}

fn seqs(frames: &[Frame]) -> Vec<i64> {
    frames
        .iter()
        .flat_map(|f| f.events.iter().map(|e| e.seq))
        .collect()
}

#[test]
fn a_frame_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let f = frame(1, 3);
    write(dir.path(), std::slice::from_ref(&f));
    let back = read_frames(dir.path(), 0).unwrap();
    assert_eq!(back.len(), 1);
    let b = &back[0];
    assert_eq!(
        (b.tenants[0].id, b.tenants[0].project, &*b.tenants[0].name),
        (7, 1, "acme")
    );
    assert_eq!(b.tenants[0].created_at, 5);
    for (x, y) in f.events.iter().zip(&b.events) {
        assert_eq!(
            (x.seq, x.project, x.tenant_id, x.index, x.notify),
            (y.seq, y.project, y.tenant_id, y.index, y.notify)
        );
        assert_eq!((&x.leaf, &x.nodes), (&y.leaf, &y.nodes));
        // The derived fields come back from the leaf.
        assert_eq!((x.id, &x.tenant, &x.action), (y.id, &y.tenant, &y.action));
        assert_eq!(
            (&x.actor_id, x.result, &x.tags),
            (&y.actor_id, y.result, &y.tags)
        );
        assert_eq!(
            (x.received_at, x.occurred_at, &x.search_text),
            (y.received_at, y.occurred_at, &y.search_text)
        );
    }
    assert_eq!((b.heads[0].size, b.heads[0].root), (3, [9; 32]));
    assert_eq!(&*b.heads[0].name, "acme");
    let i = &b.idempotency[0];
    assert_eq!(
        (
            i.project,
            i.key.as_str(),
            i.request_hash,
            i.status,
            i.body.as_slice(),
            i.created_at
        ),
        (1, "k-1", [3; 32], 201, &b"{}"[..], 6)
    );
}

#[test]
fn frames_at_or_below_the_folded_seq_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[frame(1, 2), frame(3, 2), frame(5, 2)]);
    assert_eq!(
        seqs(&read_frames(dir.path(), 0).unwrap()),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(seqs(&read_frames(dir.path(), 4).unwrap()), [5, 6]);
    assert!(read_frames(dir.path(), 6).unwrap().is_empty());
}

fn segment(dir: &Path) -> PathBuf {
    let segs = segments(dir).unwrap();
    assert_eq!(segs.len(), 1);
    segs[0].1.clone()
}

#[test]
fn a_torn_last_frame_is_dropped_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[frame(1, 2), frame(3, 2)]);
    let path = segment(dir.path());
    let len = fs::metadata(&path).unwrap().len();
    for cut in [1, 7, 8, 9, 100] {
        let torn = tempfile::tempdir().unwrap();
        let copy = torn.path().join(path.file_name().unwrap());
        fs::copy(&path, &copy).unwrap();
        File::options()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(len - cut)
            .unwrap();
        assert_eq!(
            seqs(&read_frames(torn.path(), 0).unwrap()),
            [1, 2],
            "cut {cut}"
        );
    }
}

fn corrupted(dir: &Path) -> String {
    match read_frames(dir, 0) {
        Err(StoreError::Corrupted(m)) => m,
        other => panic!("expected Corrupted, got {:?}", other.map(|f| seqs(&f))),
    }
}

#[test]
fn a_damaged_frame_before_intact_ones_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[frame(1, 2), frame(3, 2), frame(5, 2)]);
    let path = segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let second = MAGIC.len() + 8 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    // A flipped byte inside the second frame's payload fails its checksum,
    // and an intact frame follows: acknowledged data was damaged.
    bytes[second + 40] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    assert!(corrupted(dir.path()).contains("intact frames follow"));
    // A length past the end of the file is a tear: the frames before it stay.
    bytes[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    assert_eq!(seqs(&read_frames(dir.path(), 0).unwrap()), [1, 2]);
}

#[test]
fn a_damaged_last_frame_is_a_tear() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[frame(1, 2), frame(3, 2)]);
    let path = segment(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x01;
    // Zeros past the end, as a crash can leave them, are no frame either.
    bytes.extend_from_slice(&[0; 4096]);
    fs::write(&path, &bytes).unwrap();
    assert_eq!(seqs(&read_frames(dir.path(), 0).unwrap()), [1, 2]);
}

#[test]
fn nothing_after_a_tear_counts_unless_it_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path()).unwrap();
    j.append(1, &frame(1, 2).encode()).unwrap();
    j.append(3, &frame(3, 2).encode()).unwrap();
    j.len = SEGMENT_BYTES;
    j.append(5, &frame(5, 2).encode()).unwrap();
    let segs = segments(dir.path()).unwrap();
    // Tear the first segment's last frame: the later segment's intact frame
    // cannot have been acknowledged after it, so this is damage.
    let first = fs::read(&segs[0].1).unwrap();
    fs::write(&segs[0].1, &first[..first.len() - 5]).unwrap();
    assert!(corrupted(dir.path()).contains("an intact frame follows"));
    // With only a header in the later segment, the tear simply ends the journal.
    fs::write(&segs[1].1, MAGIC).unwrap();
    assert_eq!(seqs(&read_frames(dir.path(), 0).unwrap()), [1, 2]);
}

#[test]
fn frames_that_skip_seqs_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[frame(1, 2), frame(4, 2)]);
    assert!(corrupted(dir.path()).contains("skip from seq 3 to 4"));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[frame(3, 2)]);
    assert!(
        matches!(read_frames(dir.path(), 1), Err(StoreError::Corrupted(m)) if m.contains("skip from seq 2 to 3")),
        "the first frame must follow what is folded"
    );
}

#[test]
fn a_segment_without_its_header_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[frame(1, 2)]);
    fs::write(dir.path().join(format!("{:020}.seg", 3)), b"TK").unwrap();
    assert_eq!(seqs(&read_frames(dir.path(), 0).unwrap()), [1, 2]);
    // Past a headless segment, an intact frame is damage.
    fs::write(
        dir.path().join(format!("{:020}.seg", 5)),
        [MAGIC.as_slice(), &frame(5, 1).encode()].concat(),
    )
    .unwrap();
    assert!(corrupted(dir.path()).contains("headless segment"));
}

#[test]
fn an_intact_frame_that_contradicts_its_leaf_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = frame(1, 2);
    f.events[1].index = 9;
    write(dir.path(), &[f]);
    let err = read_frames(dir.path(), 0).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupted(m) if m.contains("leaf says index 1, record says 9")),
        "{err:?}"
    );
}

#[test]
fn only_fully_folded_older_segments_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    for first in [1, 11, 21] {
        fs::write(dir.path().join(format!("{first:020}.seg")), MAGIC).unwrap();
    }
    let firsts = |d: &Path| segments(d).unwrap().iter().map(|s| s.0).collect::<Vec<_>>();
    remove_folded(dir.path(), 9).unwrap();
    assert_eq!(firsts(dir.path()), [1, 11, 21], "seq 10 is not folded yet");
    remove_folded(dir.path(), 10).unwrap();
    assert_eq!(firsts(dir.path()), [11, 21]);
    remove_folded(dir.path(), 1_000).unwrap();
    assert_eq!(
        firsts(dir.path()),
        [21],
        "the newest segment stays for the writer"
    );
    remove_all(dir.path()).unwrap();
    assert!(firsts(dir.path()).is_empty());
}

#[test]
fn a_full_segment_is_followed_by_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path()).unwrap();
    j.append(1, &frame(1, 1).encode()).unwrap();
    j.len = SEGMENT_BYTES;
    j.append(2, &frame(2, 1).encode()).unwrap();
    let segs: Vec<i64> = segments(dir.path()).unwrap().iter().map(|s| s.0).collect();
    assert_eq!(segs, [1, 2]);
    assert_eq!(seqs(&read_frames(dir.path(), 0).unwrap()), [1, 2]);
}
