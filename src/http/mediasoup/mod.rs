//! The seed's socket.io "Vessel" protocol, for clients written against
//! mediasoup-client (the seed's `VesselClient.ts`). Each request `<name>` is
//! answered by the event `re:<name>`, with `{error}` when it fails (the
//! seed's Node server stayed silent). The media runs on the same SFU as
//! WHIP/WHEP, through str0m's SDP-free direct API, so viewers of either
//! protocol watch casters of either.
//!
//! A socket belongs to one live: the `live` query parameter, `demo` without
//! one (the seed sends none). Its stream key or viewer token comes in the
//! socket.io `auth` payload (`{token}`) or a `token` query parameter.

mod caps;
pub(crate) mod params;

use std::net::SocketAddr;

use std::collections::HashMap;

use axum::extract::Query;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use str0m::media::MediaKind;

use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

use super::AppState;
use crate::access::Admission;
use crate::sfu::{PeerId, Role};

/// The requests, in the order a client makes them.
#[derive(Debug, Clone, Copy)]
enum Request {
    RouterCapabilities,
    CreateTransport(Role),
    ConnectTransport(Role),
    Produce,
    Consume,
}

const REQUESTS: [(&str, Request); 7] = [
    ("routerCapabilities", Request::RouterCapabilities),
    (
        "createProducerTransport",
        Request::CreateTransport(Role::Cast),
    ),
    (
        "connectProducerTransport",
        Request::ConnectTransport(Role::Cast),
    ),
    ("produce", Request::Produce),
    (
        "createConsumerTransport",
        Request::CreateTransport(Role::Play),
    ),
    (
        "connectConsumerTransport",
        Request::ConnectTransport(Role::Play),
    ),
    ("consume", Request::Consume),
];

/// Numbers sockets for the logs.
static CONNS: AtomicU64 = AtomicU64::new(1);

/// How long a consumer on an edge waits for the live's relay to bring its
/// producers before being told the live is not on air.
const RELAY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The live of a socket that names none, as the seed's client does.
const DEFAULT_LIVE: &str = "demo";

/// Transports one socket may hold: a client makes one or two.
const MAX_TRANSPORTS: usize = 8;

/// Requests a socket may have waiting. A client waits for each answer; one
/// that does not is answered `{error}` rather than queued without bound.
const MAX_QUEUED: usize = 32;

/// The socket.io endpoint at `path`, and its handle (closed on shutdown).
pub fn layer(state: AppState, path: &str) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder().req_path(path.to_owned()).build_layer();
    // The request handlers are registered in a middleware, which runs before
    // socketioxide sends the connect packet: its connect handler runs after
    // it, and a client that asks at once (the seed's asks for the router's
    // capabilities on `connect`) could be heard before the handlers were
    // there, its request dropped and never answered. The handler only
    // turns away a bad live name (a middleware cannot emit).
    let handler = |socket: SocketRef| {
        if let Err(e) = super::check_live(&live_of(&socket)) {
            let _ = socket.emit("error", &json!({ "error": e.1 }));
            let _ = socket.disconnect();
        }
        std::future::ready(())
    };
    let middleware = move |socket: SocketRef, Data(auth): Data<Value>| {
        on_connect(socket, auth, state.clone());
        std::future::ready(Ok::<(), std::convert::Infallible>(()))
    };
    io.ns("/", handler.with(middleware));
    (layer, io)
}

/// The socket's live: `?live=`, percent-decoded, or the seed's default.
fn live_of(socket: &SocketRef) -> String {
    let query: HashMap<String, String> = Query::try_from_uri(&socket.req_parts().uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    query
        .get("live")
        .map_or(DEFAULT_LIVE, String::as_str)
        .to_owned()
}

/// Registers the socket's request handlers and starts its request task
/// (before the connect packet goes out: see [`layer`]).
fn on_connect(socket: SocketRef, auth: Value, state: AppState) {
    let parts = socket.req_parts();
    // Percent-decoded: socket.io-client encodes query values, and a stream
    // key may hold `+`, `/` or `=`.
    let query: HashMap<String, String> = Query::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let live = live_of(&socket);
    let credential = auth["token"]
        .as_str()
        .or(auth["key"].as_str())
        .or(query.get("token").map(String::as_str))
        .or(query.get("key").map(String::as_str))
        .map(str::to_owned);
    let (remote, forwarded_for) = super::client_of(parts);
    if super::check_live(&live).is_err() {
        // Turned away by the connect handler.
        return;
    }
    // Requests are queued to one task per socket: they run in the order
    // they came, with no lock. The closures run inline when a packet
    // arrives (only a handler's future is spawned), so the queue keeps it.
    let (tx, mut rx) = mpsc::channel::<(&'static str, Request, Value)>(MAX_QUEUED);
    for (name, request) in REQUESTS {
        let tx = tx.clone();
        socket.on(name, move |s: SocketRef, TryData(arg): TryData<Value>| {
            // A request whose argument is missing or isn't JSON still gets
            // an answer: the client awaits one.
            let Ok(arg) = arg else {
                let e = json!({ "error": format!("{name} needs one argument, a JSON object") });
                let _ = s.emit(format!("re:{name}"), &e);
                return std::future::ready(());
            };
            if tx.try_send((name, request, arg)).is_err() {
                let e = json!({ "error": "too many requests waiting: wait for each answer" });
                let _ = s.emit(format!("re:{name}"), &e);
            }
            std::future::ready(())
        });
    }
    // The task's only way out: the handlers above hold senders and the task
    // holds the socket, so the queue never closes by itself. Heard however
    // full the queue is (a stored permit if nobody waits).
    let gone = Arc::new(Notify::new());
    let notify = gone.clone();
    socket.on_disconnect(move || {
        notify.notify_one();
        std::future::ready(())
    });
    drop(tx);
    // Not the socket.io session id: it is the capability to poll the socket.
    let span =
        tracing::info_span!("socket.io", %live, conn = CONNS.fetch_add(1, Ordering::Relaxed));
    let mut session = Session {
        state,
        live,
        credential,
        remote,
        forwarded_for,
        client: crate::http::admission::client_of(&parts.extensions),
        transports: Vec::new(),
    };
    tokio::spawn(
        async move {
            loop {
                let (name, request, arg) = tokio::select! {
                    biased;
                    _ = gone.notified() => break,
                    Some(next) = rx.recv() => next,
                };
                let reply = session.handle(request, arg).await.unwrap_or_else(|e| {
                    tracing::info!("{name} refused: {e}");
                    json!({ "error": e })
                });
                let _ = socket.emit(format!("re:{name}"), &reply);
            }
            // Disconnected (or the server is closing): end what it opened.
            // (Dropping the session does it too, should a request panic.)
            session.close().await;
        }
        .instrument(span),
    );
}

struct Transport {
    peer: PeerId,
    role: Role,
    /// Producers this viewer transport consumes.
    consumed: Vec<String>,
}

struct Session {
    state: AppState,
    live: String,
    credential: Option<String>,
    remote: SocketAddr,
    forwarded_for: Option<String>,
    /// The client address the limits count it under.
    client: crate::limits::Client,
    transports: Vec<Transport>,
}

impl Session {
    async fn handle(&mut self, request: Request, arg: Value) -> Result<Value, String> {
        match request {
            Request::RouterCapabilities => Ok(caps::router_capabilities()),
            Request::CreateTransport(role) => self.open(role).await,
            Request::ConnectTransport(role) => self.connect(role, &arg).await,
            Request::Produce => self.produce(&arg).await,
            Request::Consume => self.consume(&arg).await,
        }
    }

    async fn open(&mut self, role: Role) -> Result<Value, String> {
        let state = &self.state;
        state.accepting().map_err(|e| e.1)?;
        let credential = self.credential.as_deref();
        match role {
            Role::Cast => state.access.check_cast(&self.live, credential),
            Role::Play => state.access.check_play(&self.live, credential),
        }
        .map_err(|d| d.to_string())?;
        if self.transports.len() >= MAX_TRANSPORTS {
            return Err(format!(
                "this socket already has {MAX_TRANSPORTS} transports; reconnect to start over"
            ));
        }
        state
            .access
            .admit(&Admission {
                live: &self.live,
                role: &role.to_string(),
                remote: self.remote,
                forwarded_for: self.forwarded_for.as_deref(),
                protocol: "socket.io",
            })
            .await
            .map_err(|d| d.to_string())?;
        // A consumer on an edge: the live comes from its origin node.
        if role == Role::Play
            && let Some(cluster) = &state.cluster
        {
            cluster.relays.ensure(state, &self.live);
        }
        let transport = state
            .media
            .open_direct(&self.live, role, self.client)
            .await
            .map_err(|e| e.to_string())?;
        self.transports.push(Transport {
            peer: transport.peer,
            role,
            consumed: Vec::new(),
        });
        let ice = state
            .ice
            .as_ref()
            .map(|i| serde_json::to_value(i.issue()).unwrap_or_default());
        Ok(params::transport(&transport, ice))
    }

    /// The transport a request names (`transportId`), or without one this
    /// socket's latest of `role` (the seed's consumer requests name none).
    fn transport(&mut self, role: Role, arg: &Value) -> Result<&mut Transport, String> {
        let named = arg.get("transportId").and_then(Value::as_str);
        let found = match named {
            Some(id) => self
                .transports
                .iter_mut()
                .rev()
                .find(|t| t.role == role && t.peer.to_string() == id),
            None => self.transports.iter_mut().rev().find(|t| t.role == role),
        };
        found.ok_or_else(|| match (named, role) {
            (Some(id), _) => format!("no {role} transport '{id}' on this socket"),
            (None, Role::Cast) => {
                "no producer transport yet: send createProducerTransport first".into()
            }
            (None, Role::Play) => {
                "no consumer transport yet: send createConsumerTransport first".into()
            }
        })
    }

    async fn connect(&mut self, role: Role, arg: &Value) -> Result<Value, String> {
        let peer = self.transport(role, arg)?.peer;
        let (fingerprint, server) = params::dtls(&arg["dtlsParameters"])?;
        if server {
            return Err(
                "Vessel is always the DTLS server: connect with role 'client' or 'auto'".into(),
            );
        }
        self.state
            .media
            .connect_direct(peer, fingerprint)
            .await
            .map_err(|e| e.to_string())?;
        Ok(json!({}))
    }

    async fn produce(&mut self, arg: &Value) -> Result<Value, String> {
        let peer = self.transport(Role::Cast, arg)?.peer;
        let produce = params::produce(arg)?;
        // A first producer takes the live: as a WHIP offer would, it must
        // still be welcome (not draining, key not revoked since the
        // transport was made) before and after.
        let state = &self.state;
        state.accepting().map_err(|e| e.1)?;
        let credential = self.credential.as_deref();
        let still_allowed = || {
            state
                .access
                .check_cast(&self.live, credential)
                .map_err(|d| d.to_string())
        };
        still_allowed()?;
        let producer = state
            .media
            .produce(&self.live, peer, produce)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = still_allowed() {
            let _ = state.media.leave(&self.live, Role::Cast, peer).await;
            return Err(e);
        }
        // The reply is the bare producer id, as the seed expects.
        Ok(json!(producer.id))
    }

    /// The argument is the client's `rtpCapabilities` (the seed's form), or
    /// `{rtpCapabilities, producerId?, transportId?}`. Without a producer id
    /// it gets the first producer this transport does not consume yet,
    /// video before audio: the seed's one `consume` gets the video.
    async fn consume(&mut self, arg: &Value) -> Result<Value, String> {
        let caps = match arg.get("rtpCapabilities") {
            Some(c) => c,
            None if arg.get("codecs").is_some() => arg,
            None => return Err("send the device's rtpCapabilities".into()),
        };
        let device_pts = params::device_pts(caps);
        let wanted = arg
            .get("producerId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let live = self.live.clone();
        let media = self.state.media.clone();
        self.transport(Role::Play, arg)?;
        let mut producers = media.producers(&live).await.map_err(|e| e.to_string())?;
        // On an edge the live's producers are its relay's, which may still
        // be opening when the consumer asks.
        if producers.is_empty() && self.relayed_from_elsewhere().await {
            let until = tokio::time::Instant::now() + RELAY_WAIT;
            while producers.is_empty() && tokio::time::Instant::now() < until {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                producers = media.producers(&live).await.map_err(|e| e.to_string())?;
            }
        }
        let transport = self.transport(Role::Play, arg)?;
        producers.sort_by_key(|p| p.kind == MediaKind::Audio);
        let producer = match &wanted {
            Some(id) => producers.into_iter().find(|p| &p.id == id).ok_or_else(|| {
                format!("live '{live}' has no producer '{id}' (its caster may have changed)")
            })?,
            None => producers
                .into_iter()
                .find(|p| !transport.consumed.contains(&p.id))
                .ok_or_else(|| {
                    format!("live '{live}' has nothing (more) to consume: is it on air?")
                })?,
        };
        let stream = transport.peer.to_string();
        let consumer = media
            .consume(transport.peer, producer, device_pts)
            .await
            .map_err(|e| e.to_string())?;
        transport.consumed.push(consumer.producer.id.clone());
        Ok(params::consumer(&consumer, &stream, caps))
    }

    /// Whether this socket's live is cast on another node of the cluster.
    async fn relayed_from_elsewhere(&self) -> bool {
        let Some(cluster) = &self.state.cluster else {
            return false;
        };
        matches!(cluster.origin(&self.live).await, Ok(Some(c)) if c.node != cluster.node_id())
    }

    async fn close(&mut self) {
        for t in self.transports.drain(..) {
            let _ = self.state.media.leave(&self.live, t.role, t.peer).await;
        }
    }
}

impl Drop for Session {
    /// What `close` did not get to (a request panicked): ended in the
    /// background.
    fn drop(&mut self) {
        let left = std::mem::take(&mut self.transports);
        if left.is_empty() {
            return;
        }
        let (media, live) = (self.state.media.clone(), self.live.clone());
        tokio::spawn(async move {
            for t in left {
                let _ = media.leave(&live, t.role, t.peer).await;
            }
        });
    }
}
