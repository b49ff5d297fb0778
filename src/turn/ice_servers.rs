//! The ICE servers Vessel hands to clients: in WHIP/WHEP `Link` headers
//! (RFC 9725 §4.6) and from `GET /api/ice-servers` for SDKs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Credentials;

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Mints TURN credentials and lists the URLs they are good for.
#[derive(Debug, Clone)]
pub struct IceServers {
    /// `host:port`s of the STUN/TURN listener as clients should reach it.
    pub hosts: Vec<String>,
    /// `host:port`s of the TURN-over-TLS listener, when there is one.
    pub tls_hosts: Vec<String>,
    pub credentials: Credentials,
    /// How long minted credentials may start new allocations.
    pub ttl: Duration,
}

impl IceServers {
    /// The STUN server and the TURN server with fresh credentials.
    pub fn issue(&self) -> Vec<IceServer> {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = format!("vessel-{:08x}", rand::random::<u32>());
        let (username, credential) = self.credentials.mint(&id, unix_now, self.ttl);
        let mut turn = Vec::new();
        for host in &self.hosts {
            turn.push(format!("turn:{host}?transport=udp"));
            turn.push(format!("turn:{host}?transport=tcp"));
        }
        for tls in &self.tls_hosts {
            turn.push(format!("turns:{tls}?transport=tcp"));
        }
        vec![
            IceServer {
                urls: self.hosts.iter().map(|h| format!("stun:{h}")).collect(),
                username: None,
                credential: None,
            },
            IceServer {
                urls: turn,
                username: Some(username),
                credential: Some(credential),
            },
        ]
    }
}

/// RFC 9725 §4.6 `Link` header values, one per URL.
pub fn link_headers(servers: &[IceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(cred)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quote(user),
                    quote(cred)
                ));
            }
            links.push(link);
        }
    }
    links
}

/// Escapes a value for an HTTP quoted-string.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn links_carry_stun_and_turn_with_credentials() {
        let servers = IceServers {
            hosts: vec!["203.0.113.7:3478".into()],
            tls_hosts: vec!["turn.example.com:5349".into()],
            credentials: Credentials::new("secret".into(), HashMap::new()),
            ttl: Duration::from_secs(3600),
        }
        .issue();
        let links = link_headers(&servers);
        assert_eq!(links.len(), 4);
        assert_eq!(links[0], "<stun:203.0.113.7:3478>; rel=\"ice-server\"");
        let user = servers[1].username.as_ref().unwrap();
        let cred = servers[1].credential.as_ref().unwrap();
        assert_eq!(
            links[1],
            format!(
                "<turn:203.0.113.7:3478?transport=udp>; rel=\"ice-server\"; username=\"{user}\"; \
                 credential=\"{cred}\"; credential-type=\"password\""
            )
        );
        assert!(links[2].starts_with("<turn:203.0.113.7:3478?transport=tcp>"));
        assert!(links[3].starts_with("<turns:turn.example.com:5349?transport=tcp>"));
        let (expiry, id) = user.split_once(':').unwrap();
        assert!(expiry.parse::<u64>().is_ok() && id.starts_with("vessel-"));
        assert_eq!(
            *cred,
            super::super::credentials::rest_password("secret", user)
        );
    }

    #[test]
    fn quoted_strings_are_escaped() {
        assert_eq!(quote(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
