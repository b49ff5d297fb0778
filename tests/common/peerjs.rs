//! A WebSocket client speaking what npm `peerjs` speaks to a PeerServer.

use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::Server;

pub type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Opens `/peer/peerjs?key=&id=&token=` (reads time out after 10 s).
pub fn open(server: &Server, key: &str, id: &str, token: &str) -> Socket {
    let url = server
        .url(&format!("/peer/peerjs?key={key}&id={id}&token={token}"))
        .replace("http://", "ws://");
    let (mut ws, _) = tungstenite::connect(url).expect("the WebSocket opens");
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws
}

/// The next JSON frame, or None once the server closed the socket.
pub fn next(ws: &mut Socket) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return None;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

pub fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}
