//! The acknowledgment journal: append-only segment files that hold every
//! acknowledged group commit until the fold has moved it into the database.
//!
//! The journal lives in `<db>.journal/`. Each segment is named by the first
//! `seq` it holds (`<20 digits>.seg`), starts with [`MAGIC`] and holds
//! frames: a `u32` payload length, the `u32` CRC-32 (IEEE) of the payload,
//! then the payload. One frame is one group commit, and no reply leaves
//! before its frame is `fdatasync`ed, so a crash can tear only a frame
//! nobody was told about; reading stops at the first frame whose length or
//! checksum is wrong. All integers are little-endian; `docs/design.md`
//! ("Acknowledgment journal") gives the record layout.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tlog::Hash;
use uuid::Uuid;

use super::super::{ProjectId, StoreError};
use crate::model::{Event, Outcome};

/// First bytes of every segment: the format name and its version.
pub(super) const MAGIC: &[u8; 8] = b"TKJRNL\x00\x01";
/// A new segment is started once the current one holds this many bytes, so
/// folded segments can be deleted while the server keeps appending.
const SEGMENT_BYTES: u64 = 32 << 20;
/// A frame header claiming more than this is damage, not a group commit
/// (`commit.max_batch_events` events of at most `limits.max_body_bytes`).
const MAX_FRAME_BYTES: u32 = 1 << 30;

const REC_TENANT: u8 = 1;
const REC_EVENT: u8 = 2;
const REC_HEAD: u8 = 3;
const REC_IDEMPOTENCY: u8 = 4;

/// The journal directory of the database at `db`.
pub(crate) fn dir_for(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.journal", db.display()))
}

/// A tenant created by a group commit.
#[derive(Debug, Clone)]
pub(super) struct NewTenant {
    pub(super) id: i64,
    pub(super) project: ProjectId,
    pub(super) name: Arc<str>,
    pub(super) created_at: i64,
}

/// A tenant's tree head after a group commit.
#[derive(Debug, Clone)]
pub(super) struct Head {
    pub(super) tenant_id: i64,
    pub(super) project: ProjectId,
    pub(super) name: Arc<str>,
    pub(super) size: u64,
    pub(super) root: Hash,
}

/// An idempotency record written with its events.
#[derive(Debug, Clone)]
pub(super) struct IdemRecord {
    pub(super) project: ProjectId,
    pub(super) key: String,
    pub(super) request_hash: [u8; 32],
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
    pub(super) created_at: i64,
}

/// One acknowledged event. The first group of fields is what the journal
/// stores; the rest is derived from the leaf, kept so that reads and the
/// fold need not decode it again.
#[derive(Debug, Clone)]
pub(super) struct TailEvent {
    pub(super) seq: i64,
    pub(super) project: ProjectId,
    pub(super) tenant_id: i64,
    pub(super) index: u64,
    /// Queue a notification to the project's webhooks when folded.
    pub(super) notify: bool,
    pub(super) leaf: Vec<u8>,
    /// The tree nodes this leaf completed, level 0 (the leaf hash) first:
    /// node `(level, index >> level)`.
    pub(super) nodes: Vec<Hash>,

    pub(super) id: Uuid,
    pub(super) tenant: Arc<str>,
    pub(super) received_at: i64,
    pub(super) occurred_at: i64,
    pub(super) action: String,
    pub(super) actor_id: String,
    pub(super) result: Option<Outcome>,
    pub(super) tags: Vec<String>,
    pub(super) targets: Vec<String>,
    pub(super) search_text: String,
}

impl TailEvent {
    /// The derived fields of `event`, which has its index assigned.
    #[expect(
        clippy::too_many_arguments,
        reason = "each argument is a stored field the event itself does not carry"
    )]
    pub(super) fn new(
        seq: i64,
        project: ProjectId,
        tenant_id: i64,
        tenant: Arc<str>,
        notify: bool,
        event: &Event,
        mut leaf: Vec<u8>,
        nodes: Vec<Hash>,
    ) -> Self {
        // Tail events wait in memory for the fold: keep no slack capacity.
        leaf.shrink_to_fit();
        let mut search_text = event.search_text();
        search_text.shrink_to_fit();
        Self {
            seq,
            project,
            tenant_id,
            index: event.index,
            notify,
            leaf,
            nodes,
            id: event.id,
            tenant,
            received_at: event.received_at.as_micros(),
            occurred_at: event.occurred_at.as_micros(),
            action: event.action.clone(),
            actor_id: event.actor.id.clone(),
            result: event.result,
            tags: event.tags.clone(),
            targets: event.targets.iter().map(|t| t.id.clone()).collect(),
            search_text,
        }
    }

    /// The leaf hash, as the tree stores it.
    pub(super) fn leaf_hash(&self) -> Hash {
        self.nodes[0]
    }
}

/// One group commit: what it created, appended and left as heads.
#[derive(Debug, Clone, Default)]
pub(super) struct Frame {
    pub(super) tenants: Vec<NewTenant>,
    pub(super) events: Vec<TailEvent>,
    pub(super) heads: Vec<Head>,
    pub(super) idempotency: Vec<IdemRecord>,
}

impl Frame {
    /// The `seq` of the last event; frames are only written with events.
    pub(super) fn last_seq(&self) -> i64 {
        self.events.last().map_or(0, |e| e.seq)
    }

    /// The frame's bytes as written: header, then payload.
    pub(super) fn encode(&self) -> Vec<u8> {
        let leaf_bytes: usize = self.events.iter().map(|e| e.leaf.len() + 64).sum();
        let mut out = Vec::with_capacity(8 + leaf_bytes + 64 * self.events.len());
        out.extend_from_slice(&[0; 8]);
        for t in &self.tenants {
            out.push(REC_TENANT);
            put_i64(&mut out, t.id);
            put_i64(&mut out, t.project);
            put_i64(&mut out, t.created_at);
            put_bytes(&mut out, t.name.as_bytes());
        }
        for e in &self.events {
            out.push(REC_EVENT);
            put_i64(&mut out, e.seq);
            put_i64(&mut out, e.project);
            put_i64(&mut out, e.tenant_id);
            put_u64(&mut out, e.index);
            out.push(u8::from(e.notify));
            put_bytes(&mut out, &e.leaf);
            out.push(e.nodes.len() as u8);
            for n in &e.nodes {
                out.extend_from_slice(n);
            }
        }
        for h in &self.heads {
            out.push(REC_HEAD);
            put_i64(&mut out, h.tenant_id);
            put_i64(&mut out, h.project);
            put_u64(&mut out, h.size);
            out.extend_from_slice(&h.root);
            put_bytes(&mut out, h.name.as_bytes());
        }
        for i in &self.idempotency {
            out.push(REC_IDEMPOTENCY);
            put_i64(&mut out, i.project);
            put_bytes(&mut out, i.key.as_bytes());
            out.extend_from_slice(&i.request_hash);
            out.extend_from_slice(&i.status.to_le_bytes());
            put_bytes(&mut out, &i.body);
            put_i64(&mut out, i.created_at);
        }
        let payload_len = u32::try_from(out.len() - 8).expect("a frame is under 4 GiB");
        let crc = crc32fast::hash(&out[8..]);
        out[..4].copy_from_slice(&payload_len.to_le_bytes());
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a payload whose checksum matched.
    fn decode(payload: &[u8]) -> Result<Self, String> {
        let mut r = Reader(payload);
        let mut frame = Self::default();
        while !r.0.is_empty() {
            match r.u8()? {
                REC_TENANT => frame.tenants.push(NewTenant {
                    id: r.i64()?,
                    project: r.i64()?,
                    created_at: r.i64()?,
                    name: r.str()?.into(),
                }),
                REC_EVENT => {
                    let (seq, project, tenant_id, index) = (r.i64()?, r.i64()?, r.i64()?, r.u64()?);
                    let notify = r.u8()? != 0;
                    let leaf = r.bytes()?.to_vec();
                    let n = usize::from(r.u8()?);
                    let nodes = (0..n).map(|_| r.hash()).collect::<Result<Vec<_>, _>>()?;
                    if nodes.is_empty() {
                        return Err(format!("event seq {seq} has no leaf hash"));
                    }
                    let event = Event::from_leaf(&leaf)
                        .map_err(|e| format!("event seq {seq}: leaf does not decode: {e}"))?;
                    if event.index != index {
                        return Err(format!(
                            "event seq {seq}: leaf says index {}, record says {index}",
                            event.index
                        ));
                    }
                    let tenant: Arc<str> = event.tenant.as_str().into();
                    frame.events.push(TailEvent::new(
                        seq, project, tenant_id, tenant, notify, &event, leaf, nodes,
                    ));
                }
                REC_HEAD => frame.heads.push(Head {
                    tenant_id: r.i64()?,
                    project: r.i64()?,
                    size: r.u64()?,
                    root: r.hash()?,
                    name: r.str()?.into(),
                }),
                REC_IDEMPOTENCY => frame.idempotency.push(IdemRecord {
                    project: r.i64()?,
                    key: r.str()?.to_owned(),
                    request_hash: r.hash()?,
                    status: u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")),
                    body: r.bytes()?.to_vec(),
                    created_at: r.i64()?,
                }),
                other => return Err(format!("unknown record type {other}")),
            }
        }
        if frame.events.is_empty() {
            return Err("a frame without events".into());
        }
        Ok(frame)
    }
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).expect("under 4 GiB").to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("record cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn hash(&mut self) -> Result<Hash, String> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(n as usize)
    }
    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|e| e.to_string())
    }
}

/// The segment files of a journal directory, oldest first, with the first
/// `seq` each holds.
pub(super) fn segments(dir: &Path) -> io::Result<Vec<(i64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<i64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Every intact frame holding an event after `after`, oldest first.
///
/// Reading stops at the first torn frame (or headless segment): frames are
/// acknowledged in write order and only once synced, so nothing after a
/// frame that did not reach the disk whole was acknowledged, in that
/// segment or a later one. An intact frame *after* that point cannot come
/// from a crash, only from damage to acknowledged data, and so can frames
/// that do not continue `seq` from `after`: both are
/// [`StoreError::Corrupted`], since starting anyway would drop acknowledged
/// events and reuse their indexes.
pub(super) fn read_frames(dir: &Path, after: i64) -> Result<Vec<Frame>, StoreError> {
    let io = |e: io::Error| StoreError::Backend(Box::new(e));
    let corrupt = |path: &Path, what: String| {
        StoreError::Corrupted(format!(
            "journal {}: {what}; to start without the journal, move {} aside (acknowledged events in it are then lost)",
            path.display(),
            dir.display()
        ))
    };
    let mut frames: Vec<Frame> = Vec::new();
    let mut stopped: Option<String> = None;
    for (_, path) in segments(dir).map_err(io)? {
        let mut bytes = Vec::new();
        match File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => {}
            // A running server's fold deleted it: everything in it is folded.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        }
        let body = bytes.strip_prefix(MAGIC.as_slice());
        if let Some(at) = &stopped {
            if body.is_some_and(|mut rest| next_frame(&mut rest).is_some()) {
                return Err(corrupt(&path, format!("an intact frame follows {at}")));
            }
            continue;
        }
        let Some(mut rest) = body else {
            // A segment is created and its header synced before any frame
            // goes in, so a headless one holds nothing acknowledged.
            stopped = Some(format!("the headless segment {}", path.display()));
            continue;
        };
        while !rest.is_empty() {
            let offset = bytes.len() - rest.len();
            let Some(payload) = next_frame(&mut rest) else {
                // A whole frame whose checksum fails, followed by an intact
                // one, was damaged after it was written: a crash tears only
                // the last frame.
                if let Some(mut after_bad) = skip_frame(rest)
                    && next_frame(&mut after_bad).is_some()
                {
                    return Err(corrupt(
                        &path,
                        format!(
                            "the frame at byte {offset} is damaged and intact frames follow it"
                        ),
                    ));
                }
                tracing::warn!(path = %path.display(), offset, "torn journal frame; it and what follows were never acknowledged");
                stopped = Some(format!(
                    "the torn frame at byte {offset} of {}",
                    path.display()
                ));
                break;
            };
            let frame = Frame::decode(payload).map_err(|e| corrupt(&path, e))?;
            if frame.last_seq() <= after {
                continue;
            }
            let expected = frames.last().map_or(after, Frame::last_seq) + 1;
            if frame.events[0].seq != expected {
                return Err(corrupt(
                    &path,
                    format!("frames skip from seq {expected} to {}", frame.events[0].seq),
                ));
            }
            frames.push(frame);
        }
    }
    Ok(frames)
}

/// What follows the frame at the start of `rest`, by its length alone.
fn skip_frame(rest: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().expect("4 bytes"));
    if len == 0 || len > MAX_FRAME_BYTES {
        return None;
    }
    rest.get(8 + len as usize..)
}

/// Splits the next intact frame's payload off `rest`. A frame always holds
/// an event, so a zero length (zeros past a crash) is not a frame.
fn next_frame<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let header = rest.get(..8)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_FRAME_BYTES {
        return None;
    }
    let payload = rest.get(8..8 + len as usize)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    *rest = &rest[8 + len as usize..];
    Some(payload)
}

/// Deletes every segment whose frames all hold events at or below
/// `folded`, except the newest, which the writer may still append to.
pub(super) fn remove_folded(dir: &Path, folded: i64) -> io::Result<()> {
    let segs = segments(dir)?;
    for pair in segs.windows(2) {
        if pair[1].0 <= folded + 1 {
            fs::remove_file(&pair[0].1)?;
        }
    }
    Ok(())
}

/// Deletes every segment; only for when everything in them is folded and
/// no writer is appending.
pub(super) fn remove_all(dir: &Path) -> io::Result<()> {
    for (_, path) in segments(dir)? {
        fs::remove_file(path)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment the writer appends to.
pub(super) struct Journal {
    dir: PathBuf,
    file: Option<Arc<File>>,
    len: u64,
}

/// The file a frame went into; syncing it makes the frame durable.
#[derive(Clone)]
pub(super) struct Written(Arc<File>);

impl Written {
    /// `fdatasync`s the segment, making every frame written to it so far
    /// durable.
    ///
    /// # Errors
    /// Any IO error; after one, what the file holds is unknown.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    /// Whether both frames went into the same segment.
    pub(super) fn same_file(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Journal {
    /// A journal in `dir`, created if missing. The first append starts a
    /// new segment; existing segments are left to [`read_frames`].
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            // The directory's own entry must survive a crash too.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            file: None,
            len: 0,
        })
    }

    /// Writes one encoded frame (see [`Frame::encode`]) whose first event
    /// has `first_seq`. It is durable only once [`Written::sync`] returns.
    ///
    /// # Errors
    /// Any IO error; after one, what the file holds is unknown and the
    /// writer must stop appending.
    pub(super) fn write(&mut self, first_seq: i64, frame: &[u8]) -> io::Result<Written> {
        if self.file.is_none() || self.len >= SEGMENT_BYTES {
            self.start_segment(first_seq)?;
        }
        let file = self.file.as_ref().expect("a segment is open");
        (&**file).write_all(frame)?;
        self.len += frame.len() as u64;
        Ok(Written(file.clone()))
    }

    /// Writes and syncs one frame.
    #[cfg(test)]
    pub(super) fn append(&mut self, first_seq: i64, frame: &[u8]) -> io::Result<()> {
        self.write(first_seq, frame)?.sync()
    }

    fn start_segment(&mut self, first_seq: i64) -> io::Result<()> {
        // The old segment is synced by the syncer, which syncs every segment
        // a group wrote to, in order: one thread owns each file's syncs, so a
        // write-back error cannot be reported to one caller and missed by
        // the other.
        let path = self.dir.join(format!("{first_seq:020}.seg"));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_data()?;
        // The new name must survive a crash before a frame in it is acknowledged.
        sync_dir(&self.dir)?;
        self.file = Some(Arc::new(file));
        self.len = MAGIC.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests;
