//! SkyWay's peer authentication, as pages already compute it: the
//! `credential` option `{timestamp, ttl, authToken}` with
//! `authToken = base64(HMAC-SHA256(secret, "<timestamp>:<ttl>:<peerId>"))`.
//! In Vessel the secret is the stream key of the live a page casts, so a
//! site's backend mints casting rights without handing the key to the
//! browser. A page may also pass the stream key itself, or a viewer token
//! for a private live, as `authToken`.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// SkyWay's bounds on a credential's lifetime, seconds.
pub const TTL_MIN: u64 = 600;
pub const TTL_MAX: u64 = 90_000;
/// A timestamp this far ahead of the server's clock is still accepted.
const CLOCK_SKEW: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub timestamp: u64,
    pub ttl: u64,
    pub auth_token: String,
}

impl Credential {
    /// From the handshake's `credential` (JSON) or an `UPDATE_CREDENTIAL`.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let number = |k: &str| {
            v.get(k).and_then(|n| {
                n.as_u64()
                    .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
            })
        };
        let (Some(timestamp), Some(ttl)) = (number("timestamp"), number("ttl")) else {
            return Err("a credential needs a numeric timestamp and ttl".into());
        };
        let Some(auth_token) = v.get("authToken").and_then(Value::as_str) else {
            return Err("a credential needs an authToken".into());
        };
        if auth_token.is_empty() || auth_token.len() > 4096 {
            return Err("the credential's authToken is empty or too long".into());
        }
        Ok(Self {
            timestamp,
            ttl,
            auth_token: auth_token.to_string(),
        })
    }

    /// The message SkyWay signed.
    pub fn message(&self, peer_id: &str) -> String {
        format!("{}:{}:{}", self.timestamp, self.ttl, peer_id)
    }

    /// When it stops being valid (Unix seconds).
    pub fn expires(&self) -> u64 {
        self.timestamp.saturating_add(self.ttl)
    }

    /// Checks the time bounds SkyWay enforced.
    pub fn check_time(&self, unix_now: u64) -> Result<(), String> {
        if !(TTL_MIN..=TTL_MAX).contains(&self.ttl) {
            return Err(format!(
                "the credential's ttl must be {TTL_MIN}-{TTL_MAX} seconds"
            ));
        }
        if self.timestamp > unix_now + CLOCK_SKEW {
            return Err("the credential's timestamp is in the future".into());
        }
        if unix_now >= self.expires() {
            return Err("the credential has expired: update it (peer.updateCredential)".into());
        }
        Ok(())
    }

    /// Whether `auth_token` is `secret`'s signature for `peer_id`.
    pub fn signed_by(&self, secret: &str, peer_id: &str) -> bool {
        let expected = sign(secret, &self.message(peer_id));
        let given = self.auth_token.trim();
        expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// `base64(HMAC-SHA256(secret, message))`, as SkyWay's samples compute it.
pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn skyways_scheme_signs_timestamp_ttl_and_peer_id() {
        // Node: crypto.createHmac('sha256', 'secret').update('1600000000:3600:alice').digest('base64')
        assert_eq!(
            sign("secret", "1600000000:3600:alice"),
            "vAXDCYbRhkuv02SVt9dt4D0HnsPoypfPFaIWn078Td4="
        );
        let c = Credential::from_json(&json!({
            "timestamp": 1600000000u64, "ttl": 3600, "authToken": sign("key", "1600000000:3600:alice")
        }))
        .unwrap();
        assert!(c.signed_by("key", "alice"));
        assert!(!c.signed_by("key", "bob"), "bound to the peer id");
        assert!(!c.signed_by("other", "alice"), "and to the secret");
        assert_eq!(c.check_time(1600000100), Ok(()));
        assert!(c.check_time(1600003600).unwrap_err().contains("expired"));
        assert!(c.check_time(1599990000).unwrap_err().contains("future"));
    }

    #[test]
    fn malformed_credentials_are_refused_with_a_reason() {
        assert!(Credential::from_json(&json!({"ttl": 600, "authToken": "x"})).is_err());
        assert!(Credential::from_json(&json!({"timestamp": 1, "ttl": 600})).is_err());
        let c = Credential::from_json(&json!({"timestamp": "5", "ttl": "600", "authToken": "x"}));
        assert_eq!(c.unwrap().timestamp, 5, "numbers as strings are taken");
        let short = Credential::from_json(&json!({"timestamp": 1, "ttl": 10, "authToken": "x"}));
        assert!(short.unwrap().check_time(2).unwrap_err().contains("ttl"));
    }
}
