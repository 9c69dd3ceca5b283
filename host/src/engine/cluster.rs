//! Several nodes on one store: which node runs which rule.
//!
//! Every `sluice serve` on a PostgreSQL store is a node. Nodes beat a
//! heartbeat into the `nodes` table; a node is live while its heartbeat is
//! within the lease time-to-live and it is not shutting down. A rule is
//! run by the node that holds its lease (`leases`: node, epoch, expiry, on
//! the database's clock). Each node, every tick:
//!
//! 1. renews the leases it holds; one it could not renew was taken over
//!    (it was stopped past its expiry): the rule stops here at once;
//! 2. for every deployed rule, picks the node that should run it —
//!    rendezvous hashing over the live nodes, so a node joining or leaving
//!    moves only its share of the rules;
//! 3. takes the lease of a rule that should be its own when nobody holds it
//!    (released, expired, new), bumping the epoch, and starts the rule;
//! 4. hands over a rule that should be another's: stops and joins it, then
//!    releases the lease, so the other takes it at its next tick.
//!
//! The epoch is the fencing token: every transaction written for a rule
//! carries it ([`crate::log::EventLog::fence`]) and the store commits it
//! only while the lease is still this node's at that epoch. A node that
//! was paused past its lease and wakes up commits nothing for the rules it
//! lost; the new owner opens their state where the last commit left it.
//!
//! A node that shuts down stops its rules, then releases its leases, so
//! the others take them at their next tick; a node that is killed loses
//! its leases when they expire.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;
use tokio::sync::watch;

use super::deploy::Deployments;
use crate::log::postgres::{LeaseRow, NodeRow};
use crate::log::{Lease, PostgresBackend, StoreError};
use crate::tenants::Quotas;

/// How a node takes part.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id (unique among the nodes; a fresh one per start).
    pub node: String,
    /// Where this node serves the API, for the others to forward to
    /// (`http://host:port`).
    pub addr: String,
    /// How long a lease lasts without renewal: a killed node's rules move
    /// after at most this (plus a tick).
    pub ttl: Duration,
}

impl ClusterConfig {
    /// A fresh node id: `n-` and 12 hex digits.
    pub fn new_node_id() -> String {
        let mut buf = [0u8; 6];
        getrandom::fill(&mut buf).expect("the OS random source works");
        format!("n-{}", hex::encode(buf))
    }

    /// How often a node renews, balances and looks for rules to take.
    pub fn tick(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// The node that should run `key` among `live` nodes: the one whose hash
/// with the key is highest (rendezvous hashing). `None` when no node is
/// live.
pub fn rendezvous<'a>(live: &[&'a str], key: &str) -> Option<&'a str> {
    live.iter().copied().max_by_key(|node| {
        let digest = sha2::Sha256::digest(format!("{node}\n{key}"));
        (
            u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")),
            *node,
        )
    })
}

/// Where a request about a rule goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node runs it (or has just taken its lease).
    Here,
    /// Another live node holds its lease.
    There {
        /// The node.
        node: String,
        /// Where it serves the API.
        addr: String,
        /// Whether its heartbeat is fresh: a node that stopped beating
        /// (killed) still holds the lease until it expires.
        live: bool,
    },
}

/// What `GET /v1/cluster` shows.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The node answering.
    pub node: String,
    /// The lease time-to-live (ms).
    pub lease_ttl_ms: u64,
    /// Every node the store knows, with the rules each holds.
    pub nodes: Vec<NodeView>,
}

/// One node of [`ClusterView`].
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Its id.
    pub id: String,
    /// Where it serves the API.
    pub addr: String,
    /// When it joined (ms since the epoch, the database's clock).
    pub started: i64,
    /// Its last heartbeat (ms since the epoch, the database's clock).
    pub heartbeat: i64,
    /// Live: heartbeat within the lease TTL, not shutting down.
    pub live: bool,
    /// The rules it holds leases on, as `tenant/rule`.
    pub rules: Vec<String>,
}

/// This node's part in the cluster.
#[derive(Debug)]
pub struct Cluster {
    store: PostgresBackend,
    config: ClusterConfig,
    /// The nodes as of the last tick.
    nodes: Mutex<Vec<NodeRow>>,
    /// Leases taken for a request (a deploy of a new rule, say), and
    /// when: a tick leaves such a lease alone for a while even if the rule
    /// is not deployed yet (the deploy is still compiling).
    claimed: Mutex<HashMap<(String, String), std::time::Instant>>,
}

/// How long a lease taken for a request is kept without a deployed rule.
const CLAIM_GRACE: Duration = Duration::from_secs(120);

impl Cluster {
    /// Join the cluster on `store`.
    pub fn join(store: PostgresBackend, config: ClusterConfig) -> Result<Arc<Self>, StoreError> {
        store.join(&config.node, &config.addr)?;
        let nodes = store.heartbeat(&config.node, config.ttl)?;
        Ok(Arc::new(Self {
            store,
            config,
            nodes: Mutex::new(nodes),
            claimed: Mutex::new(HashMap::new()),
        }))
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// The settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Where requests about `tenant`/`rule` go. A rule nobody holds is
    /// taken here (its lease, not yet its task: the caller deploys it, or
    /// the next tick starts it).
    pub fn route(
        &self,
        deploys: &Deployments,
        tenant: &str,
        rule: &str,
    ) -> Result<Owner, StoreError> {
        let log = deploys.log();
        if log.lease(tenant, rule).is_some() {
            return Ok(Owner::Here);
        }
        let row = self.store.lease_of(tenant, rule)?;
        if let Some(LeaseRow {
            node: Some(node),
            expires_in,
            ..
        }) = &row
            && *expires_in > 0
            && node != self.node()
        {
            let (addr, live) = self.addr_of(node)?;
            return Ok(Owner::There {
                node: node.clone(),
                addr,
                live,
            });
        }
        match self
            .store
            .acquire(tenant, rule, self.node(), self.config.ttl)?
        {
            Some(epoch) => {
                // Taken over from a node whose lease expired: the rule's
                // next start counts the outage from that node's mark.
                let before = row
                    .as_ref()
                    .and_then(|l| l.node.as_deref())
                    .filter(|n| *n != self.node());
                let mark = mark_of(log, before)?;
                deploys.engine.rule_taken_over(tenant, rule, mark);
                self.claimed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        (tenant.to_owned(), rule.to_owned()),
                        std::time::Instant::now(),
                    );
                log.set_lease(tenant, rule, Some(self.lease(epoch)));
                Ok(Owner::Here)
            }
            // Taken meanwhile: ask again.
            None => match self.store.lease_of(tenant, rule)? {
                Some(LeaseRow {
                    node: Some(node), ..
                }) if node != self.node() => {
                    let (addr, live) = self.addr_of(&node)?;
                    Ok(Owner::There { node, addr, live })
                }
                _ => Err(StoreError::new(
                    "route",
                    format!("the lease of {tenant}/{rule} is changing hands; try again"),
                )),
            },
        }
    }

    fn lease(&self, epoch: u64) -> Lease {
        Lease {
            node: self.config.node.clone(),
            epoch,
        }
    }

    /// Where `node` serves, and whether it is live (as of the last tick).
    fn addr_of(&self, node: &str) -> Result<(String, bool), StoreError> {
        let known = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|n| n.id == node)
            .map(|n| (n.addr.clone(), n.live));
        match known {
            Some(found) => Ok(found),
            None => {
                let nodes = self.store.heartbeat(self.node(), self.config.ttl)?;
                let found = nodes
                    .iter()
                    .find(|n| n.id == node)
                    .map(|n| (n.addr.clone(), n.live));
                *self.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
                found.ok_or_else(|| StoreError::new("route", format!("node {node} is not known")))
            }
        }
    }

    /// The node holding `tenant`/`rule`'s lease, if any holds it.
    pub fn holder(&self, tenant: &str, rule: &str) -> Option<String> {
        match self.store.lease_of(tenant, rule) {
            Ok(Some(LeaseRow {
                node: Some(node),
                expires_in,
                ..
            })) if expires_in > 0 => Some(node),
            _ => None,
        }
    }

    /// Where `tenant`'s new rules are deployed when that is another node:
    /// its home among the live nodes (rendezvous hashing of the tenant),
    /// so that one node's tenant lock orders them. `None`: here.
    pub fn home(&self, tenant: &str) -> Option<String> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut live: Vec<&str> = nodes
            .iter()
            .filter(|n| n.live)
            .map(|n| n.id.as_str())
            .collect();
        if !live.contains(&self.node()) {
            live.push(self.node());
        }
        let home = rendezvous(&live, &format!("tenant:{tenant}"))?;
        (home != self.node())
            .then(|| nodes.iter().find(|n| n.id == home).map(|n| n.addr.clone()))
            .flatten()
    }

    /// The other live nodes as of the last tick: (id, address).
    pub fn peers(&self) -> Vec<(String, String)> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|n| n.live && n.id != self.config.node)
            .map(|n| (n.id.clone(), n.addr.clone()))
            .collect()
    }

    /// The nodes and who holds what.
    pub fn view(&self) -> Result<ClusterView, StoreError> {
        let nodes = self.store.nodes(self.config.ttl)?;
        let leases = self.store.leases()?;
        let mut rules: HashMap<String, Vec<String>> = HashMap::new();
        for l in leases {
            if let Some(node) = l.node
                && l.expires_in > 0
            {
                rules
                    .entry(node)
                    .or_default()
                    .push(format!("{}/{}", l.tenant, l.rule));
            }
        }
        Ok(ClusterView {
            node: self.config.node.clone(),
            lease_ttl_ms: self.config.ttl.as_millis() as u64,
            nodes: nodes
                .into_iter()
                .map(|n| NodeView {
                    rules: rules.remove(&n.id).unwrap_or_default(),
                    id: n.id,
                    addr: n.addr,
                    started: n.started,
                    heartbeat: n.heartbeat,
                    live: n.live,
                })
                .collect(),
        })
    }

    /// Balance until `stop` turns true (see the module's description).
    pub async fn run(
        self: Arc<Self>,
        deploys: Arc<Deployments>,
        quotas: impl Fn(&str) -> Quotas + Send + Sync,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut failing = false;
        while !*stop.borrow() {
            match self.tick(&deploys, &quotas).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cluster tick failed; retrying");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.tick()) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One tick: renew, take, hand over.
    pub async fn tick(
        &self,
        deploys: &Deployments,
        quotas: &(impl Fn(&str) -> Quotas + Send + Sync),
    ) -> Result<(), StoreError> {
        let me = self.node().to_owned();
        let log = deploys.log().clone();
        let ttl = self.config.ttl;
        let store = self.store.clone();
        let held = log.leases();
        let (nodes, renewed, leases, deployed) = {
            let me = me.clone();
            let held: Vec<(String, String, u64)> = held
                .iter()
                .map(|(t, r, l)| (t.clone(), r.clone(), l.epoch))
                .collect();
            let registry = deploys.registry.clone();
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let renewed: HashSet<(String, String)> =
                    store.renew(&me, &held, ttl)?.into_iter().collect();
                if !held.is_empty() {
                    crate::crash::point("lease.mid_renewal");
                }
                let nodes = store.heartbeat(&me, ttl)?;
                let leases = store.leases()?;
                let deployed = registry
                    .list()
                    .map_err(|e| StoreError::new("list deployments", e))?;
                Ok((nodes, renewed, leases, deployed))
            })
            .await
            .map_err(|e| StoreError::new("cluster tick", e))??
        };
        *self.nodes.lock().unwrap_or_else(|e| e.into_inner()) = nodes.clone();

        // Leases lost (taken over while this node was away): stop at once.
        for (tenant, rule, _) in &held {
            if !renewed.contains(&(tenant.clone(), rule.clone())) {
                tracing::warn!(%tenant, %rule, "lease lost to another node; stopping the rule here");
                log.set_lease(tenant, rule, None);
                deploys.stop(tenant, rule).await;
            }
        }

        let mut live: Vec<&str> = nodes
            .iter()
            .filter(|n| n.live)
            .map(|n| n.id.as_str())
            .collect();
        if !live.contains(&me.as_str()) {
            live.push(&me);
        }
        let rows: HashMap<(String, String), &LeaseRow> = leases
            .iter()
            .map(|l| ((l.tenant.clone(), l.rule.clone()), l))
            .collect();
        let mut wanted = HashSet::new();
        // Starts and hand-overs run together once the leases are settled:
        // a node joining takes a share of hundreds of rules in one tick.
        let mut starts = Vec::new();
        let mut hand_overs = Vec::new();
        for d in &deployed {
            let key = (d.tenant.clone(), d.name.clone());
            wanted.insert(key.clone());
            let desired = rendezvous(&live, &format!("{}/{}", d.tenant, d.name));
            let mine = log.lease(&d.tenant, &d.name);
            match (desired == Some(me.as_str()), mine) {
                (true, None) => {
                    let free = rows.get(&key).is_none_or(|l| {
                        l.node.is_none() || l.expires_in <= 0 || l.node.as_deref() == Some(&me)
                    });
                    if !free {
                        continue;
                    }
                    let (store, me, t, r) = (
                        self.store.clone(),
                        me.clone(),
                        d.tenant.clone(),
                        d.name.clone(),
                    );
                    // The node whose lease expired: until when it ran.
                    let before = rows
                        .get(&key)
                        .and_then(|l| l.node.clone())
                        .filter(|n| *n != me);
                    let log2 = log.clone();
                    let taken = tokio::task::spawn_blocking(move || {
                        let epoch = store.acquire(&t, &r, &me, ttl)?;
                        let mark = match epoch {
                            Some(_) => mark_of(&log2, before.as_deref())?,
                            None => None,
                        };
                        Ok::<_, StoreError>(epoch.map(|e| (e, mark)))
                    })
                    .await
                    .map_err(|e| StoreError::new("take a lease", e))??;
                    if let Some((epoch, mark)) = taken {
                        crate::crash::point("lease.mid_takeover");
                        deploys.engine.rule_taken_over(&d.tenant, &d.name, mark);
                        tracing::info!(tenant = %d.tenant, rule = %d.name, epoch, "took the rule's lease");
                        log.set_lease(&d.tenant, &d.name, Some(self.lease(epoch)));
                        starts.push(d);
                    }
                }
                (true, Some(_)) => {
                    // Held here: make sure it runs (a deploy, a restart of
                    // a failed start).
                    if deploys.engine.status(&d.tenant, &d.name).is_none()
                        && deploys.broken(&d.tenant, &d.name).is_none()
                    {
                        starts.push(d);
                    }
                }
                (false, Some(lease)) => {
                    tracing::info!(tenant = %d.tenant, rule = %d.name, to = ?desired, "handing the rule over");
                    hand_overs.push(self.hand_over(deploys, &d.tenant, &d.name, lease));
                }
                (false, None) => {}
            }
        }
        futures_util::future::join_all(hand_overs).await;
        futures_util::future::join_all(
            starts
                .into_iter()
                .map(|d| deploys.start(&d.tenant, &d.name, quotas(&d.tenant))),
        )
        .await;
        // Leases of rules no longer deployed (undeployed here, or taken
        // by a request for a rule that never was): gone with the rule.
        let claimed: HashSet<(String, String)> = {
            let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
            claimed.retain(|_, at| at.elapsed() < CLAIM_GRACE);
            claimed.keys().cloned().collect()
        };
        for (tenant, rule, _) in log.leases() {
            let key = (tenant.clone(), rule.clone());
            if !wanted.contains(&key) && !claimed.contains(&key) {
                deploys.stop(&tenant, &rule).await;
                log.set_lease(&tenant, &rule, None);
                let (store, t, r) = (self.store.clone(), tenant.clone(), rule.clone());
                if !matches!(
                    tokio::task::spawn_blocking(move || store.drop_lease(&t, &r)).await,
                    Ok(Ok(()))
                ) {
                    tracing::warn!(%tenant, %rule, "could not drop the lease of a rule that is gone");
                }
            }
        }
        Ok(())
    }

    /// Stop a rule here, then release its lease.
    async fn hand_over(&self, deploys: &Deployments, tenant: &str, rule: &str, lease: Lease) {
        deploys.stop(tenant, rule).await;
        deploys.log().set_lease(tenant, rule, None);
        let (store, t, r) = (self.store.clone(), tenant.to_owned(), rule.to_owned());
        let released =
            tokio::task::spawn_blocking(move || store.release(&t, &r, &lease.node, lease.epoch))
                .await;
        if !matches!(released, Ok(Ok(()))) {
            tracing::warn!(%tenant, %rule, "could not release the lease; it expires instead");
        }
    }

    /// Leave: after the rules have stopped, release every lease and say
    /// this node is stopping, so the others take its rules at once.
    pub async fn leave(&self, deploys: &Deployments) {
        for (tenant, rule, _) in deploys.log().leases() {
            deploys.log().set_lease(&tenant, &rule, None);
        }
        let (store, me) = (self.store.clone(), self.node().to_owned());
        match tokio::task::spawn_blocking(move || store.leave(&me)).await {
            Ok(Ok(())) => tracing::info!("left the cluster: leases released"),
            _ => tracing::warn!("could not release the leases; they expire instead"),
        }
    }
}

/// The liveness mark of `node` ([`super::alive`]), the node whose lease
/// a take-over follows: until when it ran. Blocking.
fn mark_of(log: &crate::log::EventLog, node: Option<&str>) -> Result<Option<i64>, StoreError> {
    match node {
        Some(node) => super::alive::read(log, Some(node))
            .map_err(|e| StoreError::new("read a liveness mark", e)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_rules_and_moves_only_a_leavers_share() {
        let three = ["n-a", "n-b", "n-c"];
        let keys: Vec<String> = (0..3000).map(|i| format!("t{}/rule-{i}", i % 30)).collect();
        let owner = |nodes: &[&'static str], k: &str| rendezvous(nodes, k).unwrap();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for k in &keys {
            *counts.entry(owner(&three, k)).or_default() += 1;
        }
        for n in three {
            let c = counts[n];
            assert!((800..1200).contains(&c), "{n} has {c} of 3000");
        }
        // n-c leaves: only its rules move, and they spread over the rest.
        let two = ["n-a", "n-b"];
        for k in &keys {
            let before = owner(&three, k);
            let after = owner(&two, k);
            if before != "n-c" {
                assert_eq!(before, after, "{k} moved though its node stayed");
            }
        }
        assert_eq!(rendezvous(&[], "x"), None);
    }
}
