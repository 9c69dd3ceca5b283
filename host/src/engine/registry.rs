//! The deploy registry: which rules a server runs — each tenant's manifest
//! and component — kept in the log's database beside the rules' state, so
//! that a restarted server starts exactly the rules it ran, and they carry
//! on from their state.
//!
//! A deployment is one row per (tenant, rule) in namespace
//! [`NS_RULES`]; components are stored once per content digest in
//! [`NS_COMPONENTS`] and dropped with the last deployment that uses them.
//! A row changes in one transaction with its component.

use serde::{Deserialize, Serialize};

use crate::log::{EventLog, LogError, StateOp};

/// State namespace of the deployments.
pub const NS_RULES: &str = "sluice:rules";
/// State namespace of component bytes, by digest.
pub const NS_COMPONENTS: &str = "sluice:components";
/// State namespace of shadows: one row per (tenant, rule) that has one.
pub const NS_SHADOWS: &str = "sluice:shadows";

/// A rule's shadow: the version running beside the live one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shadow {
    /// The version, as a deployment (its manifest and component).
    #[serde(flatten)]
    pub deployment: Deployment,
    /// The log position the shadow started from (the live cursor it
    /// copied): its diff covers what came after.
    pub from_seq: u64,
}

/// One deployed rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The owning tenant.
    pub tenant: String,
    /// The rule's name.
    pub name: String,
    /// The manifest's version.
    pub version: u32,
    /// The manifest, as uploaded (TOML).
    pub manifest: String,
    /// SHA-256 of the component (hex).
    pub digest: String,
    /// When this version was deployed (engine time, ms).
    pub deployed_at: i64,
    /// Set while the rule is being undeployed (`fire` or `discard`): the
    /// row goes in the transaction that drops the rule's state, so an
    /// undeploy a crash interrupts is finished at the next start instead
    /// of leaving open windows that nothing fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<String>,
}

/// The registry over a log's database.
#[derive(Debug, Clone)]
pub struct Registry {
    log: EventLog,
}

fn key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

fn decode(key: &str, bytes: &[u8]) -> Result<Deployment, LogError> {
    serde_json::from_slice(bytes).map_err(|e| {
        LogError::Store(crate::log::StoreError::new(
            format!("deployment {key}"),
            format!("unreadable row: {e}"),
        ))
    })
}

impl Registry {
    /// The registry kept in `log`'s database.
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }

    /// Every deployment, by tenant then name.
    pub fn list(&self) -> Result<Vec<Deployment>, LogError> {
        self.log
            .state_scan(NS_RULES)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// `tenant`'s deployments, by name.
    pub fn list_tenant(&self, tenant: &str) -> Result<Vec<Deployment>, LogError> {
        self.log
            .state_scan_prefix(NS_RULES, &format!("{tenant}/"))?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// One deployment.
    pub fn get(&self, tenant: &str, name: &str) -> Result<Option<Deployment>, LogError> {
        let k = key(tenant, name);
        self.log
            .state_get(NS_RULES, &k)?
            .map(|v| decode(&k, &v))
            .transpose()
    }

    /// A stored component's bytes.
    pub fn component(&self, digest: &str) -> Result<Option<Vec<u8>>, LogError> {
        self.log.state_get(NS_COMPONENTS, digest)
    }

    /// Record `deployment` (replacing the tenant's rule of that name) with
    /// its component, in one transaction; the previous version's
    /// component goes when nothing else uses it.
    pub async fn put(&self, deployment: &Deployment, component: &[u8]) -> Result<(), LogError> {
        let mut ops = self.put_ops(deployment, component)?;
        if let Some(fence) = self.log.fence(&deployment.tenant, &deployment.name)? {
            ops.insert(0, fence);
        }
        self.log.transact(Vec::new(), ops).await.map(drop)
    }

    /// The state ops of [`Self::put`], for a caller that commits them with
    /// more (a swap commits them with its record).
    pub fn put_ops(
        &self,
        deployment: &Deployment,
        component: &[u8],
    ) -> Result<Vec<StateOp>, LogError> {
        let k = key(&deployment.tenant, &deployment.name);
        let mut ops = vec![
            StateOp::Put {
                ns: NS_RULES.into(),
                key: k.clone(),
                value: serde_json::to_vec(deployment).expect("serialisable"),
            },
            StateOp::Put {
                ns: NS_COMPONENTS.into(),
                key: deployment.digest.clone(),
                value: component.to_vec(),
            },
        ];
        if let Some(old) = self.get(&deployment.tenant, &deployment.name)?
            && old.digest != deployment.digest
            && !self.used_elsewhere(&old.digest, NS_RULES, &k)?
        {
            ops.push(StateOp::Delete {
                ns: NS_COMPONENTS.into(),
                key: old.digest,
            });
        }
        Ok(ops)
    }

    /// Mark a deployment as being undeployed with `drain` (see
    /// [`Deployment::draining`]). False when there is none.
    pub async fn mark_draining(
        &self,
        tenant: &str,
        name: &str,
        drain: &str,
    ) -> Result<bool, LogError> {
        let k = key(tenant, name);
        let Some(mut d) = self.get(tenant, name)? else {
            return Ok(false);
        };
        if d.draining.as_deref() == Some(drain) {
            return Ok(true);
        }
        d.draining = Some(drain.to_owned());
        let mut ops = vec![StateOp::Put {
            ns: NS_RULES.into(),
            key: k,
            value: serde_json::to_vec(&d).expect("serialisable"),
        }];
        if let Some(fence) = self.log.fence(tenant, name)? {
            ops.insert(0, fence);
        }
        self.log.transact(Vec::new(), ops).await?;
        Ok(true)
    }

    /// The ops that forget a deployment (and its component when nothing
    /// else uses it), for a caller that commits them with more (an
    /// undeploy commits them with the rule's state going).
    pub fn remove_ops(&self, tenant: &str, name: &str) -> Result<Vec<StateOp>, LogError> {
        let k = key(tenant, name);
        let Some(old) = self.get(tenant, name)? else {
            return Ok(Vec::new());
        };
        let mut ops = vec![StateOp::Delete {
            ns: NS_RULES.into(),
            key: k.clone(),
        }];
        if !self.used_elsewhere(&old.digest, NS_RULES, &k)? {
            ops.push(StateOp::Delete {
                ns: NS_COMPONENTS.into(),
                key: old.digest,
            });
        }
        Ok(ops)
    }

    /// A rule's shadow, if it has one.
    pub fn shadow(&self, tenant: &str, name: &str) -> Result<Option<Shadow>, LogError> {
        let k = key(tenant, name);
        self.log
            .state_get(NS_SHADOWS, &k)?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| {
                    LogError::Store(crate::log::StoreError::new(
                        format!("shadow {k}"),
                        format!("unreadable row: {e}"),
                    ))
                })
            })
            .transpose()
    }

    /// `tenant`'s shadows, by rule name.
    pub fn shadows_of(&self, tenant: &str) -> Result<Vec<Shadow>, LogError> {
        Ok(self
            .log
            .state_scan_prefix(NS_SHADOWS, &format!("{tenant}/"))?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// The ops that record `shadow` (replacing the rule's shadow) with its
    /// component.
    pub fn put_shadow_ops(
        &self,
        shadow: &Shadow,
        component: &[u8],
    ) -> Result<Vec<StateOp>, LogError> {
        let d = &shadow.deployment;
        let k = key(&d.tenant, &d.name);
        let mut ops = vec![
            StateOp::Put {
                ns: NS_SHADOWS.into(),
                key: k.clone(),
                value: serde_json::to_vec(shadow).expect("serialisable"),
            },
            StateOp::Put {
                ns: NS_COMPONENTS.into(),
                key: d.digest.clone(),
                value: component.to_vec(),
            },
        ];
        if let Some(old) = self.shadow(&d.tenant, &d.name)?
            && old.deployment.digest != d.digest
            && !self.used_elsewhere(&old.deployment.digest, NS_SHADOWS, &k)?
        {
            ops.push(StateOp::Delete {
                ns: NS_COMPONENTS.into(),
                key: old.deployment.digest,
            });
        }
        Ok(ops)
    }

    /// The ops that forget a rule's shadow (and its component when nothing
    /// else uses it).
    pub fn remove_shadow_ops(&self, tenant: &str, name: &str) -> Result<Vec<StateOp>, LogError> {
        let k = key(tenant, name);
        let Some(old) = self.shadow(tenant, name)? else {
            return Ok(Vec::new());
        };
        let mut ops = vec![StateOp::Delete {
            ns: NS_SHADOWS.into(),
            key: k.clone(),
        }];
        if !self.used_elsewhere(&old.deployment.digest, NS_SHADOWS, &k)? {
            ops.push(StateOp::Delete {
                ns: NS_COMPONENTS.into(),
                key: old.deployment.digest,
            });
        }
        Ok(ops)
    }

    /// Forget a deployment (and its component when nothing else uses it).
    /// False when there was none.
    pub async fn remove(&self, tenant: &str, name: &str) -> Result<bool, LogError> {
        let mut ops = self.remove_ops(tenant, name)?;
        if ops.is_empty() {
            return Ok(false);
        }
        if let Some(fence) = self.log.fence(tenant, name)? {
            ops.insert(0, fence);
        }
        self.log.transact(Vec::new(), ops).await?;
        Ok(true)
    }

    /// Whether a deployment or shadow other than row `except` of
    /// namespace `except_ns` runs `digest`.
    fn used_elsewhere(
        &self,
        digest: &str,
        except_ns: &str,
        except: &str,
    ) -> Result<bool, LogError> {
        for ns in [NS_RULES, NS_SHADOWS] {
            // A shadow's row holds a deployment's fields, flattened.
            let used = self
                .log
                .state_scan(ns)?
                .into_iter()
                .filter(|(k, _)| ns != except_ns || k != except)
                .any(|(k, v)| decode(&k, &v).is_ok_and(|d| d.digest == digest));
            if used {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
