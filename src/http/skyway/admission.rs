//! Rooms and lives share the access rules: a room is the live of the same
//! name. Joining a room is watching it (a private live needs a viewer
//! token); sending media in it is casting it (a keyed live needs its stream
//! key). A page passes either as the SDK's `credential` option: its
//! `authToken` is SkyWay's HMAC signature made with the live's stream key,
//! the stream key itself, or a viewer token. The admission webhook is asked
//! with `protocol: "skyway"`.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::access::{Admission, Denied};
use crate::http::AppState;
use crate::skyway::{Ask, Credential, Refusal};

/// Where a connection comes from, for the webhook.
#[derive(Debug, Clone)]
pub(super) struct Asker {
    pub remote: SocketAddr,
    pub forwarded_for: Option<String>,
    /// The client address the limits count it under.
    pub client: crate::limits::Client,
}

/// May `peer` do `ask` in `room`?
pub(super) async fn decide(
    state: &AppState,
    asker: &Asker,
    peer: &str,
    room: &str,
    ask: Ask,
    credential: Option<Value>,
) -> Result<(), Refusal> {
    let allowed = match ask {
        Ask::Watch => may_watch(state, peer, room, credential.as_ref()),
        Ask::Cast => may_cast(state, peer, room, credential.as_ref()),
    };
    allowed.map_err(refusal)?;
    let role = match ask {
        Ask::Watch => "play",
        Ask::Cast => "cast",
    };
    state
        .access
        .admit(&Admission {
            live: room,
            role,
            remote: asker.remote,
            forwarded_for: asker.forwarded_for.as_deref(),
            protocol: "skyway",
        })
        .await
        .map_err(refusal)
}

fn may_cast(
    state: &AppState,
    peer: &str,
    room: &str,
    credential: Option<&Value>,
) -> Result<(), Denied> {
    let Some(c) = credential else {
        return state.access.check_cast(room, None);
    };
    let c =
        Credential::from_json(c).map_err(|e| Denied::Unauthorized(format!("credential: {e}")))?;
    if signed(state, peer, room, &c)? {
        return Ok(());
    }
    state
        .access
        .check_cast(room, Some(&c.auth_token))
        .map_err(|e| match e {
            Denied::Unauthorized(_) if state.access.rules(room).key.is_some() => {
                Denied::Unauthorized(format!(
                    "live '{room}' needs its stream key to cast: pass `credential: {{timestamp, \
                     ttl, authToken}}` with authToken = base64(HMAC-SHA256(stream key, \
                     \"timestamp:ttl:peerId\")), or the stream key itself as authToken"
                ))
            }
            other => other,
        })
}

fn may_watch(
    state: &AppState,
    peer: &str,
    room: &str,
    credential: Option<&Value>,
) -> Result<(), Denied> {
    if !state.access.is_private(room) {
        return Ok(());
    }
    let Some(c) = credential else {
        return Err(Denied::Unauthorized(format!(
            "live '{room}' is private: pass a viewer token as the credential's authToken"
        )));
    };
    let c =
        Credential::from_json(c).map_err(|e| Denied::Unauthorized(format!("credential: {e}")))?;
    // Whoever may cast may watch.
    if signed(state, peer, room, &c)? || state.access.check_cast(room, Some(&c.auth_token)).is_ok()
    {
        return Ok(());
    }
    state.access.check_play(room, Some(&c.auth_token))
}

/// The credential is SkyWay's signature, made with `room`'s stream key,
/// and within its time. A signature that is right but out of time is
/// refused with the reason.
fn signed(state: &AppState, peer: &str, room: &str, c: &Credential) -> Result<bool, Denied> {
    let Some(key) = state.access.rules(room).key else {
        return Ok(false);
    };
    if !c.signed_by(&key, peer) {
        return Ok(false);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    c.check_time(now)
        .map(|()| true)
        .map_err(|e| Denied::Unauthorized(format!("credential: {e}")))
}

fn refusal(d: Denied) -> Refusal {
    match d {
        Denied::Unauthorized(m) => Refusal::new("authentication", m),
        Denied::Forbidden(m) => Refusal::new("permission", m),
        Denied::Unavailable(m) => Refusal::new("server-error", m),
    }
}
