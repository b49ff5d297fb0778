//! A chat client: the WebSocket at `/api/lives/{live}/chat` (reads time
//! out after 5 s).

use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::Server;

pub type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Opens the chat of `live` with `query` and reads its welcome.
pub fn open(server: &Server, live: &str, query: &str) -> (Socket, Value) {
    let url = server
        .url(&format!("/api/lives/{live}/chat?{query}"))
        .replace("http://", "ws://");
    let (mut ws, _) = tungstenite::connect(url).expect("chat opens");
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let welcome = next(&mut ws);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next JSON frame (panics on a close or after 5 s).
pub fn next(ws: &mut Socket) -> Value {
    loop {
        match ws.read().expect("a frame within 5 s") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

pub fn say(ws: &mut Socket, text: &str) {
    ws.send(Message::text(
        json!({"type": "say", "text": text}).to_string(),
    ))
    .unwrap();
}

/// The next `message` frame's (id, name, text).
pub fn message(ws: &mut Socket) -> (u64, String, String) {
    let m = next(ws);
    assert_eq!(m["type"], "message", "{m}");
    (
        m["id"].as_u64().unwrap(),
        m["name"].as_str().unwrap().to_string(),
        m["text"].as_str().unwrap().to_string(),
    )
}
