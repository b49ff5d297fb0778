//! A minimal socket.io client over a WebSocket, for the socket.io dialects'
//! tests: engine.io 4 (the mediasoup dialect, server pings) or engine.io 3
//! (skyway-js, client pings; a test is over before one is due).

use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::Server;

pub struct Ws {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Opens `{path}/?EIO={eio}&transport=websocket&{query}` and reads the
    /// engine.io open packet.
    pub fn open(server: &Server, path: &str, eio: u8, query: &str) -> Result<Self, String> {
        let url = server
            .url(&format!("{path}/?EIO={eio}&transport=websocket&{query}"))
            .replace("http://", "ws://");
        let (mut ws, _) = tungstenite::connect(url).map_err(|e| e.to_string())?;
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        let mut io = Self { ws };
        let open = io
            .frame()
            .ok_or("closed before the engine.io open packet")?;
        assert!(open.starts_with('0'), "engine.io open: {open}");
        Ok(io)
    }

    /// The next engine.io text packet (server pings answered), or None once
    /// closed.
    pub fn frame(&mut self) -> Option<String> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) if t.as_str() == "2" => {
                    self.ws.send(Message::text("3")).unwrap();
                }
                Ok(Message::Text(t)) => return Some(t.to_string()),
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next socket.io event as (name, argument); None once closed or
    /// disconnected.
    pub fn event(&mut self) -> Option<(String, Value)> {
        loop {
            let f = self.frame()?;
            if let Some(body) = f.strip_prefix("42") {
                let v: Value = serde_json::from_str(body).unwrap();
                return Some((v[0].as_str().unwrap().to_string(), v[1].clone()));
            }
            if f.starts_with("41") || f == "1" {
                return None;
            }
        }
    }

    /// The next event named `name` (others skipped).
    pub fn expect(&mut self, name: &str) -> Value {
        loop {
            match self.event() {
                Some((n, v)) if n == name => return v,
                Some(_) => {}
                None => panic!("the socket closed before {name}"),
            }
        }
    }

    pub fn send(&mut self, name: &str, arg: Value) {
        self.ws
            .send(Message::text(format!("42{}", json!([name, arg]))))
            .unwrap();
    }

    /// Any text, socket.io or not.
    pub fn raw(&mut self, text: &str) {
        let _ = self.ws.send(Message::text(text.to_string()));
    }

    /// The server closes the socket (a socket.io disconnect, an engine.io
    /// close, or the connection ends) before the read timeout.
    pub fn closed(&mut self) -> bool {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) if t.starts_with("41") || t.as_str() == "1" => return true,
                Ok(Message::Close(_)) => return true,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Disconnects politely (socket.io `41`) and closes.
    pub fn close(mut self) {
        let _ = self.ws.send(Message::text("41"));
        let _ = self.ws.close(None);
        while self.ws.read().is_ok() {}
    }
}
