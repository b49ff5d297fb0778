//! The router's RTP capabilities, as mediasoup-client's `Device.load` takes
//! them. The payload types and header-extension ids are exactly str0m's
//! defaults (`CodecConfig::new_with_defaults`, `ExtensionMap::standard`), so
//! a viewer session built with str0m's defaults already speaks every one a
//! consumer announces. The order matters: a producer takes the first codec
//! the browser shares with the router, so VP8 comes first.

use serde_json::{Value, json};

fn video_feedback() -> Value {
    json!([
        {"type": "nack"},
        {"type": "nack", "parameter": "pli"},
        {"type": "ccm", "parameter": "fir"},
        {"type": "goog-remb"},
        {"type": "transport-cc"}
    ])
}

fn video(mime: &str, pt: u8, parameters: Value) -> Value {
    json!({"kind": "video", "mimeType": mime, "preferredPayloadType": pt, "clockRate": 90000,
           "parameters": parameters, "rtcpFeedback": video_feedback()})
}

fn rtx(pt: u8, apt: u8) -> Value {
    json!({"kind": "video", "mimeType": "video/rtx", "preferredPayloadType": pt, "clockRate": 90000,
           "parameters": {"apt": apt}, "rtcpFeedback": []})
}

/// The codecs, main payload types each followed by its RTX one. H265 and
/// H264's other profiles are left out: browsers that cast through
/// mediasoup-client pick from these. Payload type 127 is never used: it is
/// mediasoup-client's probator.
pub fn codecs() -> Vec<Value> {
    vec![
        json!({"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 111,
               "clockRate": 48000, "channels": 2,
               "parameters": {"minptime": 10, "useinbandfec": 1},
               "rtcpFeedback": [{"type": "transport-cc"}]}),
        video("video/VP8", 96, json!({})),
        rtx(97, 96),
        video("video/VP9", 98, json!({"profile-id": 0})),
        rtx(99, 98),
        video(
            "video/H264",
            108,
            json!({"level-asymmetry-allowed": 1, "packetization-mode": 1, "profile-level-id": "42e01f"}),
        ),
        rtx(109, 108),
        video("video/AV1", 45, json!({})),
        rtx(46, 45),
    ]
}

/// (kind, uri, id, direction). rid and repaired-rid are receive-only: they
/// reach producers' parameters, never consumers'.
pub const HEADER_EXTENSIONS: [(&str, &str, u8, &str); 10] = [
    (
        "audio",
        "urn:ietf:params:rtp-hdrext:sdes:mid",
        4,
        "sendrecv",
    ),
    (
        "video",
        "urn:ietf:params:rtp-hdrext:sdes:mid",
        4,
        "sendrecv",
    ),
    (
        "video",
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        10,
        "recvonly",
    ),
    (
        "video",
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        11,
        "recvonly",
    ),
    (
        "audio",
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        2,
        "sendrecv",
    ),
    (
        "video",
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        2,
        "sendrecv",
    ),
    (
        "audio",
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        3,
        "sendrecv",
    ),
    (
        "video",
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        3,
        "sendrecv",
    ),
    (
        "audio",
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        1,
        "sendrecv",
    ),
    ("video", "urn:3gpp:video-orientation", 13, "sendrecv"),
];

/// The answer to `routerCapabilities`.
pub fn router_capabilities() -> Value {
    let exts: Vec<Value> = HEADER_EXTENSIONS
        .iter()
        .map(|(kind, uri, id, direction)| {
            json!({"kind": kind, "uri": uri, "preferredId": id, "preferredEncrypt": false,
                   "direction": direction})
        })
        .collect();
    json!({"codecs": codecs(), "headerExtensions": exts})
}

#[cfg(test)]
mod tests {
    use str0m::format::CodecConfig;
    use str0m::rtp::ExtensionMap;

    use super::*;
    use crate::http::mediasoup::params;
    use crate::sfu::codec::can_carry;

    #[test]
    fn every_payload_type_is_str0m_s_own_for_the_same_codec() {
        let defaults = CodecConfig::new_with_defaults();
        let codecs = codecs();
        for c in &codecs {
            let pt = c["preferredPayloadType"].as_u64().unwrap() as u8;
            assert_ne!(pt, 127, "127 is mediasoup-client's probator");
            if c["mimeType"] == "video/rtx" {
                let apt = c["parameters"]["apt"].as_u64().unwrap() as u8;
                let main = defaults.params().iter().find(|p| *p.pt() == apt).unwrap();
                assert_eq!(main.resend().map(|p| *p), Some(pt), "rtx of {apt}");
                continue;
            }
            let spec = params::codec_spec(c).unwrap_or_else(|e| panic!("{c}: {e}"));
            let ours = defaults
                .params()
                .iter()
                .find(|p| *p.pt() == pt)
                .unwrap_or_else(|| panic!("str0m has no payload type {pt}"));
            assert!(can_carry(&spec, &ours.spec()), "{c} vs {:?}", ours.spec());
        }
    }

    #[test]
    fn every_header_extension_id_is_str0m_s_standard_one() {
        let standard = ExtensionMap::standard();
        for (_, uri, id, _) in HEADER_EXTENSIONS {
            let ext = params::extension(uri).unwrap();
            assert_eq!(standard.id_of(ext), Some(id), "{uri}");
        }
    }
}
