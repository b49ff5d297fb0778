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
mod params;

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::layer::SocketIoLayer;
use str0m::media::MediaKind;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::AppState;
use crate::access::Admission;
use crate::sfu::{PeerId, Role};

/// The requests, in the order a client makes them.
const REQUESTS: [&str; 7] = [
    "routerCapabilities",
    "createProducerTransport",
    "connectProducerTransport",
    "produce",
    "createConsumerTransport",
    "connectConsumerTransport",
    "consume",
];

/// The live of a socket that names none, as the seed's client does.
const DEFAULT_LIVE: &str = "demo";

/// Transports one socket may hold: a client makes one or two.
const MAX_TRANSPORTS: usize = 8;

/// The socket.io endpoint at `path`, and its handle (closed on shutdown).
pub fn layer(state: AppState, path: &str) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder().req_path(path.to_owned()).build_layer();
    io.ns("/", move |socket: SocketRef, Data(auth): Data<Value>| {
        on_connect(socket, auth, state.clone());
        std::future::ready(())
    });
    (layer, io)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn on_connect(socket: SocketRef, auth: Value, state: AppState) {
    let parts = socket.req_parts();
    let query = parts.uri.query().unwrap_or("");
    let live = query_param(query, "live")
        .unwrap_or(DEFAULT_LIVE)
        .to_owned();
    let credential = auth["token"]
        .as_str()
        .or(auth["key"].as_str())
        .or(query_param(query, "token"))
        .or(query_param(query, "key"))
        .map(str::to_owned);
    let remote = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let forwarded_for = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Err(e) = super::check_live(&live) {
        let _ = socket.emit("error", &json!({ "error": e.1 }));
        let _ = socket.disconnect();
        return;
    }
    // Requests are queued to one task per socket: they run in the order
    // they came, with no lock. The closures run inline when a packet
    // arrives (only a handler's future is spawned), so the queue keeps it.
    let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, Value)>();
    for name in REQUESTS {
        let tx = tx.clone();
        socket.on(name, move |Data(arg): Data<Value>| {
            let _ = tx.send((name, arg));
            std::future::ready(())
        });
    }
    socket.on_disconnect(move || {
        let _ = tx.send(("disconnect", Value::Null));
        std::future::ready(())
    });
    let span = tracing::info_span!("socket.io", %live, socket = %socket.id);
    let mut session = Session {
        state,
        live,
        credential,
        remote,
        forwarded_for,
        transports: Vec::new(),
    };
    tokio::spawn(
        async move {
            while let Some((name, arg)) = rx.recv().await {
                if name == "disconnect" {
                    break;
                }
                let reply = session.handle(name, arg).await.unwrap_or_else(|e| {
                    tracing::info!("{name} refused: {e}");
                    json!({ "error": e })
                });
                let _ = socket.emit(format!("re:{name}"), &reply);
            }
            // Disconnected (or the server is closing): end what it opened.
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
    transports: Vec<Transport>,
}

impl Session {
    async fn handle(&mut self, name: &str, arg: Value) -> Result<Value, String> {
        match name {
            "routerCapabilities" => Ok(caps::router_capabilities()),
            "createProducerTransport" => self.open(Role::Cast).await,
            "createConsumerTransport" => self.open(Role::Play).await,
            "connectProducerTransport" => self.connect(Role::Cast, &arg).await,
            "connectConsumerTransport" => self.connect(Role::Play, &arg).await,
            "produce" => self.produce(&arg).await,
            "consume" => self.consume(&arg).await,
            _ => Err(format!("unknown request '{name}'")),
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
        let transport = state
            .media
            .open_direct(&self.live, role)
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
        let producer = self
            .state
            .media
            .produce(&self.live, peer, produce)
            .await
            .map_err(|e| e.to_string())?;
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
        let transport = self.transport(Role::Play, arg)?;
        let mut producers = media.producers(&live).await.map_err(|e| e.to_string())?;
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

    async fn close(&mut self) {
        for t in self.transports.drain(..) {
            let _ = self.state.media.leave(&self.live, t.role, t.peer).await;
        }
    }
}
