//! Node-to-node request auth: only nodes that know the cluster secret may
//! call each other's cluster endpoints (relays). Header
//! `X-Vessel-Cluster: <unix_ms>.<hex HMAC-SHA256(secret, METHOD\nPATH\nunix_ms)>`.
//! The time bounds a replay to the window; the method and path bind the
//! signature to the request, so one for a harmless GET opens nothing else.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const HEADER: &str = "x-vessel-cluster";

/// How far a request's time may be from ours, either way (clock skew
/// between nodes plus the request's time in flight).
pub const WINDOW_MS: u64 = 30_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no X-Vessel-Cluster header: node-to-node requests must be signed with the cluster secret"
    )]
    Missing,
    #[error("malformed X-Vessel-Cluster header: expected <unix_ms>.<hex hmac>")]
    Malformed,
    #[error(
        "the X-Vessel-Cluster signature is more than 30 s from this node's clock: check the nodes' clocks (NTP)"
    )]
    Expired,
    #[error("wrong X-Vessel-Cluster signature: do the nodes share the same --cluster-secret?")]
    Wrong,
}

fn mac(secret: &[u8], method: &str, path: &str, unix_ms: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(unix_ms.to_string().as_bytes());
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The header value for a request `method path` sent at `unix_ms`.
pub fn sign(secret: &[u8], method: &str, path: &str, unix_ms: u64) -> String {
    let tag = mac(secret, method, path, unix_ms).finalize().into_bytes();
    format!("{unix_ms}.{}", hex(&tag))
}

/// Checks a request's header (`None`: absent) at our time `now_ms`.
pub fn verify(
    secret: &[u8],
    method: &str,
    path: &str,
    header: Option<&str>,
    now_ms: u64,
) -> Result<(), AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let (time, tag) = header.trim().split_once('.').ok_or(AuthError::Malformed)?;
    let unix_ms: u64 = time.parse().map_err(|_| AuthError::Malformed)?;
    if tag.len() != 64 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Malformed);
    }
    if unix_ms.abs_diff(now_ms) > WINDOW_MS {
        return Err(AuthError::Expired);
    }
    let expected = hex(&mac(secret, method, path, unix_ms).finalize().into_bytes());
    let tag = tag.to_ascii_lowercase();
    if bool::from(expected.as_bytes().ct_eq(tag.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Wrong)
    }
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn a_signed_request_passes() {
        let h = sign(b"s3cret", "POST", "/cluster/relay/x", NOW);
        assert!(h.starts_with("1700000000000."));
        assert_eq!(
            verify(b"s3cret", "POST", "/cluster/relay/x", Some(&h), NOW),
            Ok(())
        );
        // Within the window either way.
        assert_eq!(
            verify(
                b"s3cret",
                "POST",
                "/cluster/relay/x",
                Some(&h),
                NOW + WINDOW_MS
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                b"s3cret",
                "POST",
                "/cluster/relay/x",
                Some(&h),
                NOW - WINDOW_MS
            ),
            Ok(())
        );
    }

    #[test]
    fn a_wrong_secret_fails() {
        let h = sign(b"other", "POST", "/cluster/relay/x", NOW);
        assert_eq!(
            verify(b"s3cret", "POST", "/cluster/relay/x", Some(&h), NOW),
            Err(AuthError::Wrong)
        );
    }

    #[test]
    fn a_missing_or_malformed_header_fails() {
        assert_eq!(
            verify(b"s3cret", "GET", "/p", None, NOW),
            Err(AuthError::Missing)
        );
        for bad in [
            "",
            "123",
            "abc.def",
            "123.xyz",
            &format!("{NOW}.{}", "g".repeat(64)),
        ] {
            assert_eq!(
                verify(b"s3cret", "GET", "/p", Some(bad), NOW),
                Err(AuthError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_old_or_future_timestamp_fails() {
        let h = sign(b"s3cret", "GET", "/p", NOW);
        assert_eq!(
            verify(b"s3cret", "GET", "/p", Some(&h), NOW + WINDOW_MS + 1),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify(b"s3cret", "GET", "/p", Some(&h), NOW - WINDOW_MS - 1),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn a_tampered_path_method_or_time_fails() {
        let h = sign(b"s3cret", "POST", "/cluster/relay/x", NOW);
        assert_eq!(
            verify(b"s3cret", "POST", "/cluster/relay/y", Some(&h), NOW),
            Err(AuthError::Wrong)
        );
        assert_eq!(
            verify(b"s3cret", "GET", "/cluster/relay/x", Some(&h), NOW),
            Err(AuthError::Wrong)
        );
        let (_, tag) = h.split_once('.').unwrap();
        let shifted = format!("{}.{tag}", NOW + 1);
        assert_eq!(
            verify(b"s3cret", "POST", "/cluster/relay/x", Some(&shifted), NOW),
            Err(AuthError::Wrong)
        );
    }
}
