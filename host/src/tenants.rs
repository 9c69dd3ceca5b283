//! Tenants, their tokens and quotas: read from the log's database at
//! start-up and written through.
//!
//! Tokens have the form `sluice_<id>_<secret>` and are stored as SHA-256
//! hashes, compared in constant time; a revoked token fails at once. The
//! admin token is stored the same way. A deleted tenant keeps its name
//! (the log still holds its events), so it is not given out again. The
//! ingest rate is a token bucket per tenant, in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::log::{EventLog, LogError, StateOp};

/// Why a tenant operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// No such tenant (or token).
    #[error("{0} does not exist")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}")]
    Exists(String),
    /// The name breaks the name rule.
    #[error("{0}")]
    InvalidName(String),
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

const NS_TENANTS: &str = "sluice:tenants";
const NS_TOKENS: &str = "sluice:tokens";
const NS_ADMIN: &str = "sluice:admin";
const ADMIN_KEY: &str = "token";

/// The largest quota (2⁵³ − 1: exact in every JSON reader).
const MAX_QUOTA: u64 = 9_007_199_254_740_991;

/// A whole number for a quota: JSON Schema's `integer` takes `6015.0`
/// too, and so does the server (a fraction or a negative is refused).
fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..9.0e15).contains(f))
            .map(|f| f as u64)
    });
    let whole = whole.filter(|w| *w <= MAX_QUOTA).ok_or_else(|| {
        D::Error::custom(format!("{n} is not a whole number from 0 to {MAX_QUOTA}"))
    })?;
    T::try_from(whole).map_err(|_| D::Error::custom(format!("{whole} is out of range")))
}

/// What a tenant may use. Every field has a default; a request that sets
/// some keeps the defaults of the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Rules deployed at once.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub max_rules: usize,
    /// The most fuel per call a rule may ask for (`[limits] fuel`).
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub max_fuel: u64,
    /// The longest deadline per call a rule may ask for, in ms.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub max_deadline_ms: u64,
    /// The most linear memory a rule may ask for, in bytes.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub max_memory_bytes: u64,
    /// The most fires of one rule running at once (`[concurrency] max`).
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 4_294_967_295_u64)]
    pub max_concurrency: u32,
    /// Partitions with open state per rule; an event that would open one
    /// more is skipped and recorded (`event.skipped`, reason `quota`).
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub max_partitions_per_rule: usize,
    /// Events ingested per second, sustained.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 4_294_967_295_u64)]
    pub ingest_per_second: u32,
    /// Events ingested at once above the sustained rate.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 4_294_967_295_u64)]
    pub ingest_burst: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_rules: 100,
            max_fuel: 10_000_000_000,
            max_deadline_ms: 10_000,
            max_memory_bytes: 256 << 20,
            max_concurrency: 16,
            max_partitions_per_rule: 1_000_000,
            ingest_per_second: 10_000,
            ingest_burst: 100_000,
        }
    }
}

impl Quotas {
    /// Refuse a manifest asking for more than the quota allows; the error
    /// names the manifest field.
    pub fn check(&self, manifest: &crate::manifest::Manifest) -> Result<(), String> {
        let limits = &manifest.limits;
        let over = |field: &str, asked: String, max: String| {
            Err(format!(
                "{field} = {asked} is over the tenant's quota of {max}"
            ))
        };
        if limits.fuel > self.max_fuel {
            return over(
                "limits.fuel",
                limits.fuel.to_string(),
                self.max_fuel.to_string(),
            );
        }
        if limits.deadline.as_millis() > u128::from(self.max_deadline_ms) {
            return over(
                "limits.deadline",
                format!("{:?}", limits.deadline),
                format!("{} ms", self.max_deadline_ms),
            );
        }
        if limits.memory_bytes > self.max_memory_bytes {
            return over(
                "limits.memory",
                format!("{} bytes", limits.memory_bytes),
                format!("{} bytes", self.max_memory_bytes),
            );
        }
        if manifest.concurrency.max > self.max_concurrency {
            return over(
                "concurrency.max",
                manifest.concurrency.max.to_string(),
                self.max_concurrency.to_string(),
            );
        }
        Ok(())
    }
}

/// A tenant as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    /// The tenant's name.
    pub name: String,
    /// When it was created (ms since the epoch).
    pub created_at: i64,
    /// Its quotas.
    pub quotas: Quotas,
    /// When it was deleted (its name is not given out again: the log
    /// still holds its events until retention drops them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
}

/// What a tenant's token may do. A token has one or more; one made
/// without saying has all three.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Send events (`POST /v1/events`): for webhook senders.
    Ingest,
    /// Read the tenant's events, rules, fires, feed and stats: for
    /// dashboards.
    Read,
    /// Change rules: deploy, swap, undeploy, pause, resume; re-drive and
    /// discard dead letters.
    Deploy,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Deploy];

    /// Its name as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Deploy => "deploy",
        }
    }
}

fn all_scopes() -> Vec<Scope> {
    Scope::ALL.to_vec()
}

/// A token as stored (hash only) and shown (without the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// The token's id (the part after `sluice_`).
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// When it was made (ms since the epoch).
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// What it may do (a token stored before scopes existed may do all).
    #[serde(default = "all_scopes")]
    pub scopes: Vec<Scope>,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    #[schema(ignore)]
    hash: String,
}

/// A new token: the secret is shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NewToken {
    /// The token's id.
    pub id: String,
    /// The bearer token to use.
    pub token: String,
}

/// A tenant just created, with its first token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedTenant {
    /// The tenant.
    pub tenant: Tenant,
    /// Its first token.
    pub token: NewToken,
}

/// `POST /v1/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 64 characters of a-z, 0-9, `-` and `_`, starting with a letter.
    #[schema(pattern = r"^[a-z][a-z0-9_-]{0,63}$")]
    pub name: String,
    /// Quotas; defaults for what is left out.
    #[serde(default)]
    pub quotas: Option<Quotas>,
}

#[derive(Debug, Default)]
struct Inner {
    tenants: BTreeMap<String, Tenant>,
    tokens: HashMap<String, TokenInfo>,
    admin: Option<[u8; 32]>,
}

/// A token bucket per tenant for the ingest rate.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Tenants, tokens and quotas: read at start-up, written through.
#[derive(Debug)]
pub struct Tenants {
    log: EventLog,
    inner: RwLock<Inner>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Local changes so far (a reload that raced one is dropped).
    changes: std::sync::atomic::AtomicU64,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source works");
    hex::encode(buf)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Store(crate::log::StoreError::new(
        what.to_owned(),
        format!("unreadable row: {e}"),
    ))
}

impl Tenants {
    /// Load tenants and tokens from `log`'s database.
    pub fn load(log: EventLog) -> Result<Self, LogError> {
        let inner = Self::read_store(&log)?;
        Ok(Self {
            log,
            inner: RwLock::new(inner),
            buckets: Mutex::new(HashMap::new()),
            changes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Read tenants and tokens again: on a store several nodes share,
    /// another node may have created, changed or revoked them.
    pub fn reload(&self) -> Result<(), LogError> {
        // A change made here while the store was read would be lost by
        // taking what was read: then the next reload takes it instead.
        let before = self.changes.load(std::sync::atomic::Ordering::Acquire);
        let inner = Self::read_store(&self.log)?;
        let mut current = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if self.changes.load(std::sync::atomic::Ordering::Acquire) == before {
            *current = inner;
        }
        Ok(())
    }

    fn read_store(log: &EventLog) -> Result<Inner, LogError> {
        let mut inner = Inner::default();
        for (k, v) in log.state_scan(NS_TENANTS)? {
            let t: Tenant = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            inner.tenants.insert(k, t);
        }
        for (k, v) in log.state_scan(NS_TOKENS)? {
            let t: TokenInfo = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            inner.tokens.insert(k, t);
        }
        if let Some(h) = log.state_get(NS_ADMIN, ADMIN_KEY)? {
            inner.admin = <[u8; 32]>::try_from(h.as_slice()).ok();
        }
        Ok(inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenants and tokens, to change them (counted, see
    /// [`Self::reload`]).
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        let guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        guard
    }

    /// Make `token` the admin token (stored hashed).
    pub async fn set_admin(&self, token: &str) -> Result<(), LogError> {
        let h = hash(token);
        if self.read().admin == Some(h) {
            return Ok(());
        }
        self.log
            .transact(
                Vec::new(),
                vec![StateOp::Put {
                    ns: NS_ADMIN.into(),
                    key: ADMIN_KEY.into(),
                    value: h.to_vec(),
                }],
            )
            .await?;
        self.write().admin = Some(h);
        Ok(())
    }

    /// Whether an admin token is set.
    pub fn has_admin(&self) -> bool {
        self.read().admin.is_some()
    }

    /// A fresh admin token.
    pub fn generate_admin() -> String {
        format!("sluice_admin_{}", random_hex(32))
    }

    /// What a tenant's `token` may do (`None`: not a valid tenant token).
    pub fn scopes(&self, token: &str) -> Option<Vec<Scope>> {
        let inner = self.read();
        let rest = token.strip_prefix("sluice_")?;
        let (id, _) = rest.split_once('_')?;
        let t = inner.tokens.get(id)?;
        let stored = hex::decode(&t.hash).unwrap_or_default();
        let matches: bool = hash(token).as_slice().ct_eq(&stored).into();
        (matches && t.revoked_at.is_none()).then(|| t.scopes.clone())
    }

    /// Who `token` is.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let inner = self.read();
        if let Some(rest) = token.strip_prefix("sluice_")
            && let Some((id, _)) = rest.split_once('_')
            && let Some(t) = inner.tokens.get(id)
        {
            let stored = hex::decode(&t.hash).unwrap_or_default();
            let matches: bool = hash(token).as_slice().ct_eq(&stored).into();
            return (matches && t.revoked_at.is_none()).then(|| Caller::Tenant(t.tenant.clone()));
        }
        let admin = inner.admin?;
        let matches: bool = hash(token).ct_eq(&admin).into();
        matches.then_some(Caller::Admin)
    }

    /// Whether `token` still acts for `tenant` (a feed checks it as it
    /// runs: a revoked token's feed ends).
    pub fn still_valid(&self, token: &str, tenant: &str) -> bool {
        self.authenticate(token) == Some(Caller::Tenant(tenant.to_owned()))
    }

    /// A tenant, if there is one of that name (not deleted).
    pub fn get(&self, name: &str) -> Option<Tenant> {
        self.read()
            .tenants
            .get(name)
            .filter(|t| t.deleted_at.is_none())
            .cloned()
    }

    /// Every tenant, by name (not the deleted ones).
    pub fn list(&self) -> Vec<Tenant> {
        self.read()
            .tenants
            .values()
            .filter(|t| t.deleted_at.is_none())
            .cloned()
            .collect()
    }

    /// Mark a tenant deleted and revoke its tokens, in one transaction.
    /// Its name stays taken.
    pub async fn delete(&self, name: &str, now: i64) -> Result<(), TenantError> {
        let mut tenant = self
            .get(name)
            .ok_or_else(|| TenantError::NotFound(format!("tenant {name:?}")))?;
        tenant.deleted_at = Some(now);
        let mut ops = vec![StateOp::Put {
            ns: NS_TENANTS.into(),
            key: name.to_owned(),
            value: serde_json::to_vec(&tenant).expect("serialisable"),
        }];
        let revoked: Vec<TokenInfo> = self
            .read()
            .tokens
            .values()
            .filter(|t| t.tenant == name && t.revoked_at.is_none())
            .map(|t| TokenInfo {
                revoked_at: Some(now),
                ..t.clone()
            })
            .collect();
        for t in &revoked {
            ops.push(StateOp::Put {
                ns: NS_TOKENS.into(),
                key: t.id.clone(),
                value: serde_json::to_vec(t).expect("serialisable"),
            });
        }
        self.log.transact(Vec::new(), ops).await?;
        let mut inner = self.write();
        inner.tenants.insert(name.to_owned(), tenant);
        for t in revoked {
            inner.tokens.insert(t.id.clone(), t);
        }
        Ok(())
    }

    /// Create a tenant with its first token.
    pub async fn create(
        &self,
        name: &str,
        quotas: Quotas,
        now: i64,
    ) -> Result<CreatedTenant, TenantError> {
        crate::names::check("name", name).map_err(TenantError::InvalidName)?;
        match self.read().tenants.get(name) {
            Some(t) if t.deleted_at.is_some() => {
                return Err(TenantError::Exists(format!(
                    "name: a tenant named {name:?} was deleted; tenant names are not given out again"
                )));
            }
            Some(_) => {
                return Err(TenantError::Exists(format!(
                    "name: a tenant named {name:?} exists already"
                )));
            }
            None => {}
        }
        let tenant = Tenant {
            name: name.to_owned(),
            created_at: now,
            quotas,
            deleted_at: None,
        };
        let (info, token) = Self::mint(name, now, &Scope::ALL);
        self.log
            .transact(
                Vec::new(),
                vec![
                    StateOp::Put {
                        ns: NS_TENANTS.into(),
                        key: name.to_owned(),
                        value: serde_json::to_vec(&tenant).expect("serialisable"),
                    },
                    StateOp::Put {
                        ns: NS_TOKENS.into(),
                        key: info.id.clone(),
                        value: serde_json::to_vec(&info).expect("serialisable"),
                    },
                ],
            )
            .await?;
        let mut inner = self.write();
        inner.tenants.insert(name.to_owned(), tenant.clone());
        inner.tokens.insert(info.id.clone(), info);
        Ok(CreatedTenant { tenant, token })
    }

    /// Set a tenant's quotas.
    pub async fn set_quotas(&self, name: &str, quotas: Quotas) -> Result<Tenant, TenantError> {
        let mut tenant = self
            .get(name)
            .ok_or_else(|| TenantError::NotFound(format!("tenant {name:?}")))?;
        tenant.quotas = quotas;
        self.log
            .transact(
                Vec::new(),
                vec![StateOp::Put {
                    ns: NS_TENANTS.into(),
                    key: name.to_owned(),
                    value: serde_json::to_vec(&tenant).expect("serialisable"),
                }],
            )
            .await?;
        self.write().tenants.insert(name.to_owned(), tenant.clone());
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(tenant)
    }

    fn mint(tenant: &str, now: i64, scopes: &[Scope]) -> (TokenInfo, NewToken) {
        let id = random_hex(8);
        let token = format!("sluice_{id}_{}", random_hex(32));
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let info = TokenInfo {
            id: id.clone(),
            tenant: tenant.to_owned(),
            created_at: now,
            revoked_at: None,
            scopes,
            hash: hex::encode(hash(&token)),
        };
        (info, NewToken { id, token })
    }

    /// A new token for `tenant` that may do `scopes` (at least one).
    pub async fn new_token(
        &self,
        tenant: &str,
        now: i64,
        scopes: &[Scope],
    ) -> Result<NewToken, TenantError> {
        if self.get(tenant).is_none() {
            return Err(TenantError::NotFound(format!("tenant {tenant:?}")));
        }
        if scopes.is_empty() {
            return Err(TenantError::Invalid(
                "scopes: give at least one of ingest, read and deploy".into(),
            ));
        }
        let (info, token) = Self::mint(tenant, now, scopes);
        self.put_token(&info).await?;
        self.write().tokens.insert(info.id.clone(), info);
        Ok(token)
    }

    async fn put_token(&self, info: &TokenInfo) -> Result<(), LogError> {
        self.log
            .transact(
                Vec::new(),
                vec![StateOp::Put {
                    ns: NS_TOKENS.into(),
                    key: info.id.clone(),
                    value: serde_json::to_vec(info).expect("serialisable"),
                }],
            )
            .await
            .map(drop)
    }

    /// `tenant`'s tokens, oldest first (revoked ones too).
    pub fn tokens(&self, tenant: &str) -> Vec<TokenInfo> {
        let mut list: Vec<TokenInfo> = self
            .read()
            .tokens
            .values()
            .filter(|t| t.tenant == tenant)
            .map(|t| TokenInfo {
                hash: String::new(),
                ..t.clone()
            })
            .collect();
        list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        list
    }

    /// Revoke one of `tenant`'s tokens; it stops working at once.
    pub async fn revoke(&self, tenant: &str, id: &str, now: i64) -> Result<TokenInfo, TenantError> {
        let mut info = self
            .read()
            .tokens
            .get(id)
            .filter(|t| t.tenant == tenant)
            .cloned()
            .ok_or_else(|| TenantError::NotFound(format!("token {id:?} of tenant {tenant:?}")))?;
        if info.revoked_at.is_none() {
            info.revoked_at = Some(now);
            self.put_token(&info).await?;
            self.write().tokens.insert(id.to_owned(), info.clone());
        }
        Ok(TokenInfo {
            hash: String::new(),
            ..info
        })
    }

    /// Take `n` events from `tenant`'s ingest allowance. A request is
    /// let in while at least one event's worth is left, and may overdraw
    /// it (a large batch is not refused for its size); the next ones wait
    /// until it refills. `Err` holds the seconds to wait.
    pub fn take(&self, tenant: &str, n: usize) -> Result<(), u64> {
        let Some(quotas) = self.get(tenant).map(|t| t.quotas) else {
            return Ok(());
        };
        let rate = f64::from(quotas.ingest_per_second.max(1));
        let burst = f64::from(quotas.ingest_burst.max(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(tenant.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(((1.0 - b.tokens) / rate).ceil() as u64);
        }
        b.tokens -= n as f64;
        Ok(())
    }
}

/// Who a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin.
    Admin,
    /// A tenant, by name.
    Tenant(String),
}
