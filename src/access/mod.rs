//! Who may cast and who may watch: stream keys, private lives with viewer
//! tokens, the admin token, and the admission webhook.
//!
//! The rules are plain data checked by the HTTP faces before a session
//! reaches the media workers, so a refused request never disturbs a live.

mod token;
mod webhook;

use std::collections::HashMap;
use std::sync::RwLock;

use subtle::ConstantTimeEq;

pub use token::{TokenError, ViewerTokens};
pub use webhook::{Admission, Webhook};

/// What one live requires, from the config file or the admin API. In a
/// cluster, what the admin API sets is kept in Redis (`cluster::rules`),
/// as this JSON.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LiveRules {
    /// The stream key a caster must present.
    pub key: Option<String>,
    /// Viewers need a token signed with the viewer-token secret.
    pub private: bool,
    /// Recorded while on air (`record = true`, or the admin API).
    pub record: bool,
}

/// The key stays out of debug output (and so out of logs).
impl std::fmt::Debug for LiveRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRules")
            .field("key", &self.key.as_ref().map(|_| "…"))
            .field("private", &self.private)
            .field("record", &self.record)
            .finish()
    }
}

/// A change of a live's rules by the admin API: `None` keeps a field as
/// it is. Applied here on one node, and by the script in Redis in a
/// cluster (its JSON merges field by field: `"key": null` revokes).
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RulesPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<bool>,
}

impl RulesPatch {
    pub fn apply(&self, rules: &LiveRules) -> LiveRules {
        let mut now = rules.clone();
        if let Some(key) = &self.key {
            now.key = key.clone();
        }
        if let Some(private) = self.private {
            now.private = private;
        }
        if let Some(record) = self.record {
            now.record = record;
        }
        now
    }
}

/// Why a request was refused; the HTTP faces turn it into 401/403/503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
}

pub struct Access {
    /// Lives without a key may be cast by anyone.
    open: bool,
    admin_token: Option<String>,
    /// Every listener is on loopback: the admin API needs no token.
    local_only: bool,
    tokens: Option<ViewerTokens>,
    lives: RwLock<Lives>,
    webhook: Option<Webhook>,
}

/// Each live's rules and, for those heard from the cluster's Redis, the
/// version they were stored with (a change heard late does not undo a
/// newer one).
#[derive(Default)]
struct Lives {
    rules: HashMap<String, LiveRules>,
    versions: HashMap<String, u64>,
}

impl Lives {
    fn set(&mut self, live: &str, rules: LiveRules) {
        if rules == LiveRules::default() {
            self.rules.remove(live);
        } else {
            self.rules.insert(live.to_string(), rules);
        }
    }
}

pub struct AccessConfig {
    pub open: bool,
    pub local_only: bool,
    pub admin_token: Option<String>,
    pub viewer_token_secret: Option<String>,
    pub lives: HashMap<String, LiveRules>,
    pub webhook: Option<Webhook>,
}

impl Access {
    pub fn new(config: AccessConfig) -> Self {
        Self {
            open: config.open,
            admin_token: config.admin_token,
            local_only: config.local_only,
            tokens: config
                .viewer_token_secret
                .map(|s| ViewerTokens::new(s.as_bytes())),
            lives: RwLock::new(Lives {
                rules: config.lives,
                versions: HashMap::new(),
            }),
            webhook: config.webhook,
        }
    }

    /// Anyone may cast anything and watch anything: for tests and the
    /// loopback quick start.
    pub fn open() -> Self {
        Self::new(AccessConfig {
            open: true,
            local_only: true,
            admin_token: None,
            viewer_token_secret: None,
            lives: HashMap::new(),
            webhook: None,
        })
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// An admin token is configured.
    pub fn has_admin_token(&self) -> bool {
        self.admin_token.is_some()
    }

    pub fn rules(&self, live: &str) -> LiveRules {
        self.lives
            .read()
            .expect("access rules lock")
            .rules
            .get(live)
            .cloned()
            .unwrap_or_default()
    }

    /// May this bearer cast `live`?
    pub fn check_cast(&self, live: &str, bearer: Option<&str>) -> Result<(), Denied> {
        match (self.rules(live).key, bearer) {
            (Some(key), Some(given)) if same(&key, given) => Ok(()),
            (Some(_), Some(_)) => Err(Denied::Unauthorized(format!(
                "wrong stream key for live '{live}'"
            ))),
            (Some(_), None) => Err(Denied::Unauthorized(format!(
                "live '{live}' needs its stream key: send it as 'Authorization: Bearer <key>' \
                 (OBS: the Bearer Token field)"
            ))),
            (None, _) if self.open => Ok(()),
            (None, _) => Err(Denied::Unauthorized(format!(
                "live '{live}' has no stream key, and this server is reachable from other \
                 machines, so casting needs one: add [lives.{live}] key = \"...\" to the \
                 config, create one with POST /api/lives (admin token), or set open = true"
            ))),
        }
    }

    /// May this bearer watch `live` (and read its chat)?
    pub fn check_play(&self, live: &str, bearer: Option<&str>) -> Result<(), Denied> {
        if !self.rules(live).private {
            return Ok(());
        }
        let Some(tokens) = &self.tokens else {
            return Err(Denied::Forbidden(format!(
                "live '{live}' is private but the server has no viewer-token-secret to check \
                 tokens with"
            )));
        };
        let Some(token) = bearer else {
            return Err(Denied::Unauthorized(format!(
                "live '{live}' is private: a viewer token is needed ('Authorization: Bearer \
                 <token>', or ?token= on the play page)"
            )));
        };
        tokens
            .check(token, live)
            .map_err(|e| Denied::Unauthorized(format!("viewer token refused: {e}")))
    }

    /// Asks the admission webhook, when there is one.
    pub async fn admit(&self, admission: &Admission<'_>) -> Result<(), Denied> {
        match &self.webhook {
            Some(hook) => hook.admit(admission).await,
            None => Ok(()),
        }
    }

    pub fn check_admin(&self, bearer: Option<&str>) -> Result<(), Denied> {
        match (&self.admin_token, bearer) {
            (Some(token), Some(given)) if same(token, given) => Ok(()),
            (Some(_), _) => Err(Denied::Unauthorized(
                "the admin API needs 'Authorization: Bearer <admin-token>'".into(),
            )),
            (None, _) if self.local_only => Ok(()),
            (None, _) => Err(Denied::Forbidden(
                "the admin API is off: set admin-token in the config (or VESSEL_ADMIN_TOKEN) \
                 to use it on a server reachable from other machines"
                    .into(),
            )),
        }
    }

    /// A new stream key: 192 random bits, as for TURN secrets.
    pub fn new_key() -> String {
        crate::turn::Credentials::generate_secret()
    }

    /// Changes `live`'s rules here; returns them before and after.
    pub fn change(&self, live: &str, patch: &RulesPatch) -> (LiveRules, LiveRules) {
        let mut lives = self.lives.write().expect("access rules lock");
        let before = lives.rules.get(live).cloned().unwrap_or_default();
        let after = patch.apply(&before);
        lives.set(live, after.clone());
        (before, after)
    }

    /// Takes `live`'s rules as stored in the cluster's Redis with
    /// `version`, unless a newer version was taken already; returns the
    /// rules it replaced when it took them.
    pub fn apply_stored(&self, live: &str, rules: LiveRules, version: u64) -> Option<LiveRules> {
        let mut lives = self.lives.write().expect("access rules lock");
        if lives.versions.get(live).is_some_and(|&v| v > version) {
            return None;
        }
        lives.versions.insert(live.to_string(), version);
        let before = lives.rules.get(live).cloned().unwrap_or_default();
        lives.set(live, rules);
        Some(before)
    }

    /// Creates (or replaces) the stream key of `live`; returns the key.
    /// `private`: `None` keeps the live's current setting.
    pub fn create_key(&self, live: &str, private: Option<bool>) -> String {
        let key = Self::new_key();
        self.change(
            live,
            &RulesPatch {
                key: Some(Some(key.clone())),
                private,
                record: None,
            },
        );
        key
    }

    /// Changes a live's settings without touching its key; `None` keeps
    /// one as it is. Returns the rules now.
    pub fn update(&self, live: &str, private: Option<bool>, record: Option<bool>) -> LiveRules {
        let patch = RulesPatch {
            key: None,
            private,
            record,
        };
        self.change(live, &patch).1
    }

    /// Revokes the stream key of `live`; false if it had none.
    pub fn revoke_key(&self, live: &str) -> bool {
        let patch = RulesPatch {
            key: Some(None),
            ..RulesPatch::default()
        };
        self.change(live, &patch).0.key.is_some()
    }

    /// A viewer token for `live`, valid for `ttl_secs`.
    pub fn mint_token(&self, live: &str, ttl_secs: u64) -> Result<(String, u64), Denied> {
        let tokens = self.tokens.as_ref().ok_or_else(|| {
            Denied::Forbidden(
                "no viewer-token-secret is configured, so no viewer tokens can be made".into(),
            )
        })?;
        Ok(tokens.mint(live, ttl_secs))
    }

    /// Lives that are private; the public listing leaves them out.
    pub fn is_private(&self, live: &str) -> bool {
        self.rules(live).private
    }
}

/// Compares secrets in constant time (a timing oracle must not leak keys).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(value: Option<&str>) -> Option<&str> {
    let v = value?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests;
