//! The storage contract ([`EventStore`]) and its SQLite implementation.
//!
//! Architecture invariant: an append returns a durably assigned index for
//! every event or an error; nothing is acknowledged before the transaction
//! holding the events *and* their Merkle tree nodes has committed with a
//! durable sync. Per-tenant indexes are contiguous from 0.

pub mod postgres;
pub mod sqlite;

mod schema;

use std::future::Future;
use std::pin::Pin;

use tlog::{Hash, NodeId};
use uuid::Uuid;

use crate::model::{Event, Time};

/// Numeric id of a project (the owner of API keys).
pub type ProjectId = i64;

/// Everything the store can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The write queue is full; the caller should retry later.
    #[error("the store is overloaded")]
    Overloaded,
    /// The store is shutting down or its writer died.
    #[error("the store is unavailable")]
    Unavailable,
    /// Stored data contradicts itself.
    #[error("store corrupted: {0}")]
    Corrupted(String),
    /// The database refused or failed.
    #[error("backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Backend(Box::new(e))
    }
}

/// A boxed future returned by [`EventStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Renders the response of an idempotent request from its receipts, so the
/// response can be stored in the same transaction as the events.
pub type RenderResponse = Box<dyn FnOnce(&[Receipt]) -> StoredResponse + Send + Sync>;

/// A response kept for idempotent replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// The idempotency key of a request and a digest of what it asked for.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// Caller's `Idempotency-Key`.
    pub key: String,
    /// SHA-256 of the route and body; a retry must match it.
    pub request_hash: [u8; 32],
}

/// One append request: all its events commit together or not at all.
pub struct AppendJob {
    /// Owner of the events.
    pub project: ProjectId,
    /// Validated events; `index` is assigned by the store.
    pub events: Vec<Event>,
    /// Present when the caller sent `Idempotency-Key`.
    pub idempotency: Option<(Idempotency, RenderResponse)>,
    /// Queue a notification to every webhook of the project, in the same
    /// transaction as the events.
    pub notify: bool,
}

/// What the store says about one appended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Event id.
    pub id: Uuid,
    /// Tenant name.
    pub tenant: String,
    /// Assigned leaf index.
    pub index: u64,
    /// Receive time.
    pub received_at: Time,
    /// RFC 6962 leaf hash of the event's leaf encoding.
    pub leaf_hash: Hash,
}

impl Receipt {
    /// The receipt of `event`, whose index is assigned, with its leaf hash.
    #[must_use]
    pub fn of(event: &Event, leaf_hash: Hash) -> Self {
        Self {
            id: event.id,
            tenant: event.tenant.clone(),
            index: event.index,
            received_at: event.received_at,
            leaf_hash,
        }
    }
}

/// Result of an append.
#[derive(Debug)]
pub enum AppendOutcome {
    /// Durably committed.
    Committed(Vec<Receipt>),
    /// An earlier request with the same idempotency key and body; its response.
    Replayed(StoredResponse),
    /// The idempotency key was used with a different request.
    IdempotencyConflict,
}

/// A stored event as read back.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Commit-order sequence number across the store (cursor key).
    pub seq: i64,
    /// Internal tenant id (for proofs).
    pub tenant_id: i64,
    /// Leaf index in the tenant's log, as stored in its own column.
    pub index: u64,
    /// The leaf hash the tree stores for this index.
    pub leaf_hash: Hash,
    /// The leaf bytes: the event's canonical JSON.
    pub leaf: Vec<u8>,
}

/// Filters for listing events; all given filters must match.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Exact tenant name.
    pub tenant: Option<String>,
    /// Exact actor id.
    pub actor: Option<String>,
    /// Exact action.
    pub action: Option<String>,
    /// Action prefix (from `user.*`).
    pub action_prefix: Option<String>,
    /// Exact target id.
    pub target: Option<String>,
    /// Exact tag.
    pub tag: Option<String>,
    /// `success` or `failure`.
    pub result: Option<String>,
    /// `occurred_at >= since`.
    pub since: Option<Time>,
    /// `occurred_at < until`.
    pub until: Option<Time>,
    /// Full-text terms, all of which must appear.
    pub text_terms: Vec<String>,
    /// Only events after this position in the listing's order (keyset
    /// cursor). Either kind is applied as written; pass the kind that
    /// [`EventQuery::order`] names, or the pages do not follow each other.
    pub before: Option<Cursor>,
    /// Only events with leaf index `< before_index` (with `tenant` set).
    pub before_index: Option<u64>,
    /// Page size.
    pub limit: usize,
}

impl EventQuery {
    /// The order of this listing: by event time when a time window is given.
    #[must_use]
    pub fn order(&self) -> ListOrder {
        if self.since.is_some() || self.until.is_some() {
            ListOrder::Time
        } else {
            ListOrder::Seq
        }
    }
}

/// How a listing is ordered; always descending, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOrder {
    /// `seq DESC`: arrival (commit) order.
    Seq,
    /// `occurred_at DESC, seq DESC`: event time, ties by arrival. Used when
    /// `since` or `until` is given, so a time window is one index range read
    /// in order that stops after the page.
    Time,
}

/// A keyset position: the listing key of the last event of a page. The
/// next page holds the events strictly after it in the listing's order.
///
/// Within one kind the derived order is the listing key order (ascending;
/// listings run it descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cursor {
    /// In a [`ListOrder::Seq`] listing: the events with a smaller `seq` follow.
    Seq(i64),
    /// In a [`ListOrder::Time`] listing: the events with a smaller
    /// `(occurred_at, seq)` follow.
    Time {
        /// `occurred_at` in microseconds since the epoch.
        occurred_at: i64,
        /// `seq`, which breaks ties between equal `occurred_at`.
        seq: i64,
    },
}

impl Cursor {
    /// The kind of listing this cursor pages.
    #[must_use]
    pub fn order(&self) -> ListOrder {
        match self {
            Self::Seq(_) => ListOrder::Seq,
            Self::Time { .. } => ListOrder::Time,
        }
    }

    /// The event's `seq`.
    #[must_use]
    pub fn seq(&self) -> i64 {
        match *self {
            Self::Seq(seq) | Self::Time { seq, .. } => seq,
        }
    }

    /// The position of an event with these keys in a listing of `order`.
    #[must_use]
    pub fn at(order: ListOrder, seq: i64, occurred_at: i64) -> Self {
        match order {
            ListOrder::Seq => Self::Seq(seq),
            ListOrder::Time => Self::Time { occurred_at, seq },
        }
    }
}

/// One page of results, in the query's [`ListOrder`].
#[derive(Debug, Clone)]
pub struct Page {
    /// Matching events.
    pub events: Vec<StoredEvent>,
    /// Present when more results follow: pass as `before` for the next page.
    pub next_before: Option<Cursor>,
}

/// The project an API key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Key id (for audit, never the key).
    pub key_id: i64,
    /// Project id.
    pub project: ProjectId,
    /// Project name.
    pub project_name: String,
}

/// The current head of a tenant's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// Internal tenant id.
    pub tenant_id: i64,
    /// Tree size.
    pub size: u64,
    /// Merkle root of that size.
    pub root: Hash,
}

impl TreeHead {
    /// A head from its stored columns.
    ///
    /// # Errors
    /// [`StoreError::Corrupted`] for a negative size or a root that is not 32 bytes.
    pub fn from_stored(tenant_id: i64, size: i64, root: &[u8]) -> Result<Self, StoreError> {
        Ok(Self {
            tenant_id,
            size: u64::try_from(size)
                .map_err(|_| StoreError::Corrupted("negative tree size".into()))?,
            root: root
                .try_into()
                .map_err(|_| StoreError::Corrupted("tree root is not 32 bytes".into()))?,
        })
    }
}

/// A notification webhook of a project.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Webhook id.
    pub id: i64,
    /// Target URL.
    pub url: String,
    /// Free-text description.
    pub description: Option<String>,
    /// The signing secret (`whsec_…`): returned only on creation.
    pub secret: Option<String>,
    /// Creation time.
    pub created_at: Time,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// One queued notification attempt.
#[derive(Clone)]
pub struct Delivery {
    /// Outbox row id.
    pub id: i64,
    /// Target URL.
    pub url: String,
    /// The webhook's signing secret.
    pub secret: String,
    /// Message id, the same on every attempt (`webhook-id`).
    pub msg_id: String,
    /// Body bytes, the same on every attempt.
    pub payload: Vec<u8>,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What an attempt achieved.
#[derive(Debug, Clone)]
pub enum DeliveryResult {
    /// The receiver answered 2xx.
    Delivered,
    /// Try again at the given time.
    Retry {
        /// When.
        at: Time,
        /// The HTTP status, if any answer came.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
    /// Out of attempts.
    Failed {
        /// The HTTP status, if any answer came.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

/// The storage contract every backend implements.
pub trait EventStore: Send + Sync {
    /// Durably appends a job's events (see the module invariant).
    fn append(&self, job: AppendJob) -> StoreFuture<'_, AppendOutcome>;
    /// One event by id within a project.
    fn get(&self, project: ProjectId, id: Uuid) -> StoreFuture<'_, Option<StoredEvent>>;
    /// Lists events newest first, in the query's [`EventQuery::order`].
    fn query(&self, project: ProjectId, query: EventQuery) -> StoreFuture<'_, Page>;
    /// The principal of an API key, by the key's SHA-256.
    fn authenticate(&self, key_hash: [u8; 32]) -> StoreFuture<'_, Option<Principal>>;
    /// Head of a tenant's log, if the tenant exists.
    fn tree_head(&self, project: ProjectId, tenant: String) -> StoreFuture<'_, Option<TreeHead>>;
    /// Stored complete-subtree hashes of a tenant's tree.
    fn read_nodes(&self, tenant_id: i64, ids: Vec<NodeId>) -> StoreFuture<'_, Vec<Hash>>;
    /// Events of a tenant with `index` in `[from, to)`, in index order.
    fn scan_tenant(&self, tenant_id: i64, from: u64, to: u64) -> StoreFuture<'_, Vec<StoredEvent>>;
    /// Succeeds when the store can serve reads and writes.
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// Creates a webhook; the result carries its secret, shown only now.
    fn create_webhook(
        &self,
        project: ProjectId,
        url: String,
        description: Option<String>,
    ) -> StoreFuture<'_, Webhook>;
    /// The live webhooks of a project, without secrets.
    fn list_webhooks(&self, project: ProjectId) -> StoreFuture<'_, Vec<Webhook>>;
    /// Deletes a webhook; false when the project has no such webhook.
    fn delete_webhook(&self, project: ProjectId, id: i64) -> StoreFuture<'_, bool>;
    /// Up to `limit` notifications due at `now`.
    fn due_deliveries(&self, now: Time, limit: usize) -> StoreFuture<'_, Vec<Delivery>>;
    /// Records the result of one attempt.
    fn record_delivery(&self, id: i64, result: DeliveryResult) -> StoreFuture<'_, ()>;
    /// Woken after a commit that queued notifications.
    fn outbox_signal(&self) -> std::sync::Arc<tokio::sync::Notify>;
    /// A GCRA decision shared by every node using this store: admit, or
    /// the microseconds to wait. `None` when the store has no shared state
    /// (one process owns an embedded store, so a local limiter is exact).
    fn shared_rate_limit(
        &self,
        credential: String,
        interval_us: i64,
        tolerance_us: i64,
    ) -> Option<StoreFuture<'_, Result<(), i64>>> {
        let _ = (credential, interval_us, tolerance_us);
        None
    }
}
