//! Offline consistency check of a store: every event's leaf is re-hashed
//! and compared with the stored level-0 node, each tenant's indexes must be
//! contiguous, every stored node must equal the hash of its children, and
//! the stored root must be the root of the stored tree. A check of the tree
//! alone would miss an edited payload.
//!
//! The checks live in [`TenantCheck`], fed row by row by either store.

use std::collections::HashMap;

use rusqlite::{Connection, params};
use tlog::{Frontier, Hash, NodeId};

use crate::model::Event;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Project name.
    pub project: String,
    /// Tenant name.
    pub tenant: String,
    /// Leaf index concerned, when one is.
    pub index: Option<u64>,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(
                f,
                "{}/{}: index {i}: {}",
                self.project, self.tenant, self.problem
            ),
            None => write!(f, "{}/{}: {}", self.project, self.tenant, self.problem),
        }
    }
}

/// The check of one tenant: construct with its head and stored nodes, feed
/// its events in index order, then [`TenantCheck::finish`].
pub struct TenantCheck {
    project: String,
    tenant: String,
    size: u64,
    root: Vec<u8>,
    nodes: HashMap<NodeId, Hash>,
    frontier: Frontier,
    gap: bool,
    findings: Vec<Finding>,
}

impl TenantCheck {
    /// Starts the check of a tenant whose head is `(size, root)`.
    #[must_use]
    pub fn new(
        project: String,
        tenant: String,
        size: u64,
        root: Vec<u8>,
        nodes: HashMap<NodeId, Hash>,
    ) -> Self {
        Self {
            project,
            tenant,
            size,
            root,
            nodes,
            frontier: Frontier::empty(),
            gap: false,
            findings: Vec::new(),
        }
    }

    fn report(&mut self, index: Option<u64>, problem: String) {
        self.findings.push(Finding {
            project: self.project.clone(),
            tenant: self.tenant.clone(),
            index,
            problem,
        });
    }

    /// Checks the next stored event (`idx` as stored in its own column).
    pub fn event(&mut self, idx: u64, leaf: &[u8]) {
        if self.gap {
            return;
        }
        let expected = self.frontier.size();
        if idx != expected {
            self.report(
                Some(expected),
                format!("index {expected} is missing (next stored index is {idx})"),
            );
            self.gap = true;
            return;
        }
        match Event::from_leaf(leaf) {
            Ok(e) if e.index == expected && e.tenant == self.tenant => {}
            Ok(e) => self.report(
                Some(expected),
                format!("leaf claims tenant {:?} index {}", e.tenant, e.index),
            ),
            Err(e) => self.report(Some(expected), format!("leaf does not decode: {e}")),
        }
        let lh = tlog::leaf_hash(leaf);
        if self.nodes.get(&NodeId::new(0, expected)) != Some(&lh) {
            self.report(
                Some(expected),
                "event payload does not match its stored leaf hash".into(),
            );
        }
        self.frontier.append(lh);
    }

    /// Reports the stored leaf at `idx` as unreadable (`why`) and goes on
    /// with its stored leaf hash, so the rest of the tenant is still checked.
    pub fn undecodable(&mut self, idx: u64, why: &str) {
        if self.gap {
            return;
        }
        let expected = self.frontier.size();
        if idx != expected {
            self.event(idx, &[]);
            return;
        }
        self.report(Some(expected), format!("leaf cannot be read: {why}"));
        let lh = self
            .nodes
            .get(&NodeId::new(0, expected))
            .copied()
            .unwrap_or([0; 32]);
        self.frontier.append(lh);
    }

    /// Events checked so far.
    #[must_use]
    pub fn events(&self) -> u64 {
        self.frontier.size()
    }

    /// Ends the check of this tenant.
    #[must_use]
    pub fn finish(mut self) -> Vec<Finding> {
        if !self.gap && self.frontier.size() != self.size {
            let found = self.frontier.size();
            self.report(
                None,
                format!("tenant head says {} events, {found} found", self.size),
            );
        }
        let mut bad_nodes: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, hash)| {
                id.level > 0 && {
                    let l = self.nodes.get(&NodeId::new(id.level - 1, id.index * 2));
                    let r = self.nodes.get(&NodeId::new(id.level - 1, id.index * 2 + 1));
                    !matches!((l, r), (Some(l), Some(r)) if &tlog::node_hash(l, r) == *hash)
                }
            })
            .map(|(id, _)| *id)
            .collect();
        bad_nodes.sort();
        for id in bad_nodes {
            self.report(
                Some(id.index << id.level),
                format!("tree node {id:?} does not match its children"),
            );
        }
        if !self.gap
            && self.frontier.size() == self.size
            && self.frontier.root()[..] != self.root[..]
        {
            self.report(
                None,
                "stored root is not the root of the stored events".into(),
            );
        }
        self.findings
    }
}

/// Checks every tenant of a SQLite store; returns (events checked, findings).
///
/// # Errors
/// Database failures.
pub fn check(conn: &Connection) -> Result<(u64, Vec<Finding>), rusqlite::Error> {
    let leaves = crate::store::sqlite::Leaves::default();
    let mut findings = Vec::new();
    let mut n_events = 0u64;
    let tenants: Vec<(i64, String, String, i64, Vec<u8>)> = conn
        .prepare("SELECT t.id, p.name, t.name, t.size, t.root FROM tenants t JOIN projects p ON p.id = t.project_id ORDER BY t.id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<Result<_, _>>()?;
    for (tenant_id, project, tenant, size, root) in tenants {
        // Each event row holds the nodes its append completed, level 0 first.
        let mut nodes: HashMap<NodeId, Hash> = HashMap::new();
        let mut stmt = conn.prepare("SELECT idx, nodes FROM events WHERE tenant_id = ?1")?;
        let mut rows = stmt.query(params![tenant_id])?;
        while let Some(row) = rows.next()? {
            let idx = row.get::<_, i64>(0)? as u64;
            let blob = row.get_ref(1)?.as_blob_or_null()?.unwrap_or_default();
            for (level, hash) in blob.chunks(32).enumerate() {
                nodes.insert(
                    NodeId::new(level as u8, idx >> level),
                    hash.try_into().unwrap_or([0u8; 32]),
                );
            }
        }
        let mut check = TenantCheck::new(project, tenant, size as u64, root, nodes);
        let mut stmt =
            conn.prepare("SELECT idx, leaf FROM events WHERE tenant_id = ?1 ORDER BY idx")?;
        let mut rows = stmt.query(params![tenant_id])?;
        while let Some(row) = rows.next()? {
            let index = row.get::<_, i64>(0)? as u64;
            match leaves.decode(conn, row.get(1)?) {
                Ok(leaf) => check.event(index, &leaf),
                // An undecodable leaf is a finding, like one that does not hash right.
                Err(e) => check.undecodable(index, &e.to_string()),
            }
        }
        n_events += check.events();
        findings.extend(check.finish());
    }
    Ok((n_events, findings))
}
