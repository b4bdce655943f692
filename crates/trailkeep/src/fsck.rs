//! Offline consistency check of a SQLite store: every event's leaf is
//! re-hashed and compared with the stored level-0 node, each tenant's
//! indexes must be contiguous, every stored node must equal the hash of
//! its children, and the stored root must be the root of the stored tree.
//! A check of the tree alone would miss an edited payload.

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

/// Checks every tenant; returns (events checked, findings).
///
/// # Errors
/// Database failures.
pub fn check(conn: &Connection) -> Result<(u64, Vec<Finding>), rusqlite::Error> {
    let mut findings = Vec::new();
    let mut n_events = 0u64;
    let tenants: Vec<(i64, String, String, i64, Vec<u8>)> = conn
        .prepare("SELECT t.id, p.name, t.name, t.size, t.root FROM tenants t JOIN projects p ON p.id = t.project_id ORDER BY t.id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<Result<_, _>>()?;
    for (tenant_id, project, tenant, size, root) in tenants {
        let mut report = |index: Option<u64>, problem: String| {
            findings.push(Finding {
                project: project.clone(),
                tenant: tenant.clone(),
                index,
                problem,
            });
        };
        let nodes: HashMap<NodeId, Hash> = conn
            .prepare("SELECT level, idx, hash FROM tree_nodes WHERE tenant_id = ?1")?
            .query_map(params![tenant_id], |r| {
                let hash: Vec<u8> = r.get(2)?;
                Ok((
                    NodeId::new(r.get(0)?, r.get::<_, i64>(1)? as u64),
                    hash.as_slice().try_into().unwrap_or([0u8; 32]),
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut stmt =
            conn.prepare("SELECT idx, leaf FROM events WHERE tenant_id = ?1 ORDER BY idx")?;
        let mut rows = stmt.query(params![tenant_id])?;
        let mut frontier = Frontier::empty();
        while let Some(row) = rows.next()? {
            let idx: i64 = row.get(0)?;
            let leaf: Vec<u8> = row.get(1)?;
            n_events += 1;
            let expected = frontier.size();
            if idx as u64 != expected {
                report(
                    Some(expected),
                    format!("index {expected} is missing (next stored index is {idx})"),
                );
                break;
            }
            match Event::from_leaf(&leaf) {
                Ok(e) if e.index == expected && e.tenant == tenant => {}
                Ok(e) => report(
                    Some(expected),
                    format!("leaf claims tenant {:?} index {}", e.tenant, e.index),
                ),
                Err(e) => report(Some(expected), format!("leaf does not decode: {e}")),
            }
            let lh = tlog::leaf_hash(&leaf);
            if nodes.get(&NodeId::new(0, expected)) != Some(&lh) {
                report(
                    Some(expected),
                    "event payload does not match its stored leaf hash".into(),
                );
            }
            frontier.append(lh);
        }
        if frontier.size() != size as u64 {
            report(
                None,
                format!("tenant head says {size} events, {} found", frontier.size()),
            );
        }
        for (id, hash) in &nodes {
            if id.level == 0 {
                continue;
            }
            let l = nodes.get(&NodeId::new(id.level - 1, id.index * 2));
            let r = nodes.get(&NodeId::new(id.level - 1, id.index * 2 + 1));
            match (l, r) {
                (Some(l), Some(r)) if &tlog::node_hash(l, r) == hash => {}
                _ => report(
                    Some(id.index << id.level),
                    format!("tree node {id:?} does not match its children"),
                ),
            }
        }
        if frontier.size() == size as u64 && frontier.root()[..] != root[..] {
            report(
                None,
                "stored root is not the root of the stored events".into(),
            );
        }
    }
    Ok((n_events, findings))
}
