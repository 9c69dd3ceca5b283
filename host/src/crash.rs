//! Crash points: the places on the write path where a test stops the
//! process as `kill -9` would, to check that a restart loses nothing
//! acknowledged, runs no fire twice and ends where a run without the
//! crash ends (`tests/all/failpoints.rs`).
//!
//! They exist only in builds with the `failpoints` feature (the tests'
//! build); everywhere else [`point`] is an empty function. In such a build
//! the `FAILPOINTS` variable of the `fail` crate arms them when the
//! process starts:
//!
//! - `FAILPOINTS='fire.before_completion=3*off->return'` stops the
//!   process at the fourth time the point is reached;
//! - `return(count)` only reports each time on stderr
//!   (`crash point NAME reached`), which is how a test learns how often a
//!   workload reaches each point.
//!
//! | point | where |
//! | --- | --- |
//! | `log.append.before_commit` | an append's events are in the transaction, not committed |
//! | `log.append.mid_group` | a group commit has written some requests' events, not all |
//! | `log.append.before_ack` | an append is committed, its requests not yet answered |
//! | `log.transact.between_records_and_state` | a rule's records (a fire's outputs and `fire.completed`) are in the transaction, its state (the outbox) not yet |
//! | `log.transact.merged` | one transaction holds the writes of several requests, rules' state changes among them (the writer took them from its queue together), not committed |
//! | `fire.before_completion` | a handler returned; its completion not yet committed |
//! | `fire.before_grouped_completion` | several fires (a chain, or runs that finished together) are decided, their completions not yet committed |
//! | `timer.before_commit` | a partition deadline is handled in memory, not committed |
//! | `schedule.before_commit` | a schedule tick is handled in memory, not committed |
//! | `schedule.catch_up.before_commit` | ticks missed while a rule was held are caught up in memory, not committed |
//! | `swap.old_stopped` | a hot swap stopped the old version; the new one is neither recorded nor started |
//! | `undeploy.mid_drain` | an undeploy fired its open windows; the pending fires have not run |
//! | `retention.mid_prune` | a retention pass deleted events, not committed |
//! | `lease.mid_renewal` | (PostgreSQL) a node's lease renewal is in its transaction |
//! | `lease.mid_takeover` | (PostgreSQL) a node took a rule's lease and has not started the rule |

/// Every crash point, as the table above names them.
pub const POINTS: &[&str] = &[
    "log.append.before_commit",
    "log.append.mid_group",
    "log.append.before_ack",
    "log.transact.between_records_and_state",
    "log.transact.merged",
    "fire.before_completion",
    "fire.before_grouped_completion",
    "timer.before_commit",
    "schedule.before_commit",
    "schedule.catch_up.before_commit",
    "swap.old_stopped",
    "undeploy.mid_drain",
    "retention.mid_prune",
    "lease.mid_renewal",
    "lease.mid_takeover",
];

/// Crash point `name` (one of [`POINTS`]): stop the process here if the
/// test armed it.
#[cfg(feature = "failpoints")]
pub fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unknown crash point {name}");
    fail::eval(name, |arg| {
        if arg.as_deref() == Some("count") {
            eprintln!("crash point {name} reached");
            return;
        }
        eprintln!("crash point {name}: killing the process");
        // SIGKILL, as `kill -9` sends it: no destructor, no flush, no
        // handler runs; the store sees a process that vanished.
        // SAFETY: kill(2) on our own pid has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        loop {
            std::thread::park();
        }
    });
}

/// Crash point `name`: nothing, in a build without the `failpoints`
/// feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Arm the crash points `FAILPOINTS` names, for the life of the process
/// (the `sluice` binary calls it first; nothing without the feature).
pub fn arm_from_env() {
    #[cfg(feature = "failpoints")]
    if let Ok(spec) = std::env::var("FAILPOINTS") {
        for part in spec.split(';').filter(|p| !p.trim().is_empty()) {
            let Some((name, actions)) = part.split_once('=') else {
                eprintln!("error: FAILPOINTS: {part:?} is not NAME=ACTIONS");
                std::process::exit(2);
            };
            if let Err(e) = fail::cfg(name.trim(), actions.trim()) {
                eprintln!("error: FAILPOINTS: {name}: {e}");
                std::process::exit(2);
            }
        }
    }
}
