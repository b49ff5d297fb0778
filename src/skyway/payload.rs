//! What SkyWay messages carry. Everything is JSON but `room.send(data)`,
//! whose data may be an `ArrayBuffer`/`Blob`: socket.io sends that as a
//! binary attachment, which must reach the other members as one too.

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// `room.send`'s data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Data {
    /// An `ArrayBuffer` or `Blob`: a socket.io binary attachment.
    Binary(Bytes),
    /// Anything JSON.
    Json(Value),
}

impl Data {
    /// Bytes it takes on the wire (about: JSON as serialized).
    pub fn size(&self) -> usize {
        match self {
            Data::Binary(b) => b.len(),
            Data::Json(v) => v.to_string().len(),
        }
    }

    /// A short description for the room's log.
    pub fn summary(&self) -> Value {
        const MAX: usize = 1024;
        match self {
            Data::Binary(b) => Value::String(format!("<{} bytes of binary data>", b.len())),
            Data::Json(Value::String(s)) if s.len() > MAX => {
                let mut cut = MAX;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                Value::String(format!("{}…", &s[..cut]))
            }
            Data::Json(v) if v.to_string().len() > MAX => {
                Value::String(format!("<{} bytes of JSON>", v.to_string().len()))
            }
            Data::Json(v) => v.clone(),
        }
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // socket.io's serializer turns bytes into an attachment.
            Data::Binary(b) => s.serialize_bytes(b),
            Data::Json(v) => v.serialize(s),
        }
    }
}

/// A message the server sends: JSON, or a room's data (maybe binary).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    RoomData {
        room: String,
        src: String,
        data: Data,
    },
}

impl Payload {
    /// The JSON form, binary data shown as a length (for tests and logs).
    pub fn json(&self) -> Value {
        match self {
            Payload::Json(v) => v.clone(),
            Payload::RoomData { room, src, data } => serde_json::json!({
                "roomName": room,
                "src": src,
                "data": match data {
                    Data::Json(v) => v.clone(),
                    Data::Binary(b) => serde_json::json!({ "binary": b.len() }),
                },
            }),
        }
    }

    fn size(&self) -> usize {
        match self {
            Payload::Json(v) => v.to_string().len(),
            Payload::RoomData { data, .. } => data.size() + 64,
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct RoomData<'a> {
            #[serde(rename = "roomName")]
            room: &'a str,
            src: &'a str,
            data: &'a Data,
        }
        match self {
            Payload::Json(v) => v.serialize(s),
            Payload::RoomData { room, src, data } => RoomData { room, src, data }.serialize(s),
        }
    }
}

pub(super) fn size_of(p: &Payload) -> usize {
    p.size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_round_trips_and_binary_serializes_as_bytes() {
        let d: Data = serde_json::from_str(r#"{"a":[1,"x"]}"#).unwrap();
        assert_eq!(d, Data::Json(serde_json::json!({"a": [1, "x"]})));
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"a":[1,"x"]}"#);
        let b = Data::Binary(Bytes::from_static(b"\x00\x01"));
        // serde_json has no bytes: it writes an array, socket.io an attachment.
        assert_eq!(serde_json::to_string(&b).unwrap(), "[0,1]");
        assert_eq!(b.size(), 2);
    }

    #[test]
    fn long_data_is_summarized_for_the_log() {
        let long = Data::Json(Value::String("é".repeat(2000)));
        let Value::String(s) = long.summary() else {
            panic!()
        };
        assert!(s.len() <= 1024 + 3 && s.ends_with('…'));
        let bin = Data::Binary(Bytes::from(vec![0; 10]));
        assert_eq!(bin.summary(), "<10 bytes of binary data>");
    }
}
