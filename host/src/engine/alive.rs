//! Liveness marks: the engine time until which a node is known to have
//! run, kept in the store. A restart reads the mark its store's previous
//! engine left (on several nodes, the mark of the node whose lease it
//! takes over) to know when the outage began: a deadline that fell due
//! before it fell due while the rule ran, and is handled late — the same
//! fire it would have been on time — while one that fell due during the
//! outage follows the rule's catch-up policy (ARCHITECTURE.md, "Time is
//! the log's").
//!
//! On the real clock a node marks every second and when it stops; on the
//! manual clock it marks each move of the clock, before the clock moves.

use crate::log::{EventLog, LogError, StateOp};
use crate::triggers::core::Start;

/// State namespace of the marks: one key per node (`local` for the one
/// process that writes a SQLite store).
pub const NS: &str = "sluice:alive";

/// How often a node on the real clock marks.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn key(node: Option<&str>) -> String {
    node.unwrap_or("local").to_owned()
}

/// The mark `node` (`None`: the local engine) left, if any.
pub fn read(log: &EventLog, node: Option<&str>) -> Result<Option<i64>, LogError> {
    Ok(log
        .state_get(NS, &key(node))?
        .and_then(|v| String::from_utf8_lossy(&v).parse().ok()))
}

/// Mark `node` known to run until `at`.
pub async fn mark(log: &EventLog, node: Option<&str>, at: i64) -> Result<(), LogError> {
    let op = StateOp::Put {
        ns: NS.into(),
        key: key(node),
        value: at.to_string().into_bytes(),
    };
    log.transact(Vec::new(), vec![op]).await.map(drop)
}

/// How an engine starting at `now` follows the run before it: its
/// restarted rules count as outage the time no node marked, from the
/// last mark any node left until `now` (none when a node of the cluster
/// marked since: the engine never stopped, and rules taken over from a
/// dead node are late, not missed). `Start::Cold` on a store no engine
/// marked. Read before this node's first mark. On the real clock nodes
/// mark every second, so a start can see up to that much outage that
/// was none.
pub fn outage_before(log: &EventLog, now: i64) -> Result<Start, LogError> {
    let last = log
        .state_scan(NS)?
        .iter()
        .filter_map(|(_, v)| String::from_utf8_lossy(v).parse::<i64>().ok())
        .max();
    Ok(match last {
        Some(from) => Start::After { from, until: now },
        None => Start::Cold,
    })
}
