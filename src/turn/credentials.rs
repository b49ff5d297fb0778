//! Who may use the TURN server: the TURN REST API scheme (coturn's
//! `use-auth-secret`, LiveKit, most WebRTC apps), optional static users, and
//! stateless nonces.
//!
//! REST usernames are `"<unix-expiry>:<id>"` (or just `"<unix-expiry>"`) and their password is
//! `base64(HMAC-SHA1(secret, username))`, so Vessel can hand out credentials
//! without remembering them and any service that knows the secret can mint
//! them too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// How long a nonce stays valid before the client gets a 438 and a new one.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(3600);

/// Why a username has no password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown username")]
    Unknown,
    #[error("credentials expired")]
    Expired,
}

/// The shared secret and the static users.
#[derive(Clone)]
pub struct Credentials {
    secret: String,
    static_users: HashMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret or passwords.
        f.debug_struct("Credentials")
            .field(
                "static_users",
                &self.static_users.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(secret: String, static_users: HashMap<String, String>) -> Self {
        Self {
            secret,
            static_users,
        }
    }

    /// A random secret for when none is configured.
    pub fn generate_secret() -> String {
        let bytes: [u8; 24] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The password for `username` at wall-clock time `unix_now` (seconds).
    pub fn password(&self, username: &str, unix_now: u64) -> Result<String, Refusal> {
        if let Some(password) = self.static_users.get(username) {
            return Ok(password.clone());
        }
        // "<expiry>:<id>", or a bare "<expiry>" as coturn also accepts.
        let expiry = username.split_once(':').map_or(username, |(e, _)| e);
        let expiry: u64 = expiry.parse().map_err(|_| Refusal::Unknown)?;
        if expiry <= unix_now {
            return Err(Refusal::Expired);
        }
        Ok(rest_password(&self.secret, username))
    }

    /// Mints a REST username and password valid for `ttl` from `unix_now`.
    pub fn mint(&self, id: &str, unix_now: u64, ttl: Duration) -> (String, String) {
        let username = format!("{}:{id}", unix_now + ttl.as_secs());
        let password = rest_password(&self.secret, &username);
        (username, password)
    }
}

/// `base64(HMAC-SHA1(secret, username))`, as coturn computes it.
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = HmacSha1::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// Stateless nonces: the issue time and a MAC over it and the client's IP,
/// so the server keeps no per-client nonce table.
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
}

impl Default for Nonces {
    fn default() -> Self {
        Self {
            key: rand::random(),
        }
    }
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonces")
    }
}

impl Nonces {
    pub fn issue(&self, client: IpAddr, unix_now: u64) -> String {
        format!("{unix_now:016x}{:016x}", self.mac(client, unix_now))
    }

    /// Whether `nonce` was issued by us, to this client, less than
    /// [`NONCE_LIFETIME`] ago.
    pub fn is_fresh(&self, nonce: &str, client: IpAddr, unix_now: u64) -> bool {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return false;
        }
        let (Ok(issued), Ok(mac)) = (
            u64::from_str_radix(&nonce[..16], 16),
            u64::from_str_radix(&nonce[16..], 16),
        ) else {
            return false;
        };
        mac == self.mac(client, issued)
            && issued <= unix_now
            && unix_now - issued < NONCE_LIFETIME.as_secs()
    }

    fn mac(&self, client: IpAddr, issued: u64) -> u64 {
        let mut mac = HmacSha1::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&issued.to_be_bytes());
        match client {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        let out = mac.finalize().into_bytes();
        u64::from_be_bytes(out[..8].try_into().expect("SHA-1 is 20 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn() {
        // Computed with: printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password("secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }

    #[test]
    fn minted_credentials_work_until_they_expire() {
        let c = Credentials::new("s3cret".into(), HashMap::new());
        let (user, pass) = c.mint("viewer-1", 1_000, Duration::from_secs(60));
        assert_eq!(user, "1060:viewer-1");
        assert_eq!(c.password(&user, 1_059), Ok(pass));
        assert_eq!(c.password(&user, 1_060), Err(Refusal::Expired));
        assert_eq!(c.password("viewer-1", 0), Err(Refusal::Unknown));
        assert_eq!(
            c.password("1060", 1_000),
            Ok(rest_password("s3cret", "1060"))
        );
        assert_eq!(c.password("soon:viewer-1", 0), Err(Refusal::Unknown));
    }

    #[test]
    fn static_users_take_precedence() {
        let users = HashMap::from([("alice".to_string(), "pw".to_string())]);
        let c = Credentials::new("s".into(), users);
        assert_eq!(c.password("alice", 0), Ok("pw".into()));
    }

    #[test]
    fn nonces_are_bound_to_client_and_time() {
        let n = Nonces::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let nonce = n.issue(ip, 5_000);
        assert!(n.is_fresh(&nonce, ip, 5_000));
        assert!(n.is_fresh(&nonce, ip, 5_000 + 3_599));
        assert!(!n.is_fresh(&nonce, ip, 5_000 + 3_600));
        assert!(!n.is_fresh(&nonce, "192.0.2.2".parse().unwrap(), 5_000));
        assert!(!n.is_fresh("0000000000001388ffffffffffffffff", ip, 5_000));
        assert!(!n.is_fresh("short", ip, 5_000));
        assert!(!Nonces::default().is_fresh(&nonce, ip, 5_000));
    }
}
