//! mediasoup-client's JSON, to and from the SFU's direct-API types.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use str0m::config::Fingerprint;
use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
use str0m::media::{Frequency, MediaKind, Pt};
use str0m::rtp::Extension;

use super::caps;
use crate::sfu::{Consumer, DirectTransport, Produce};

/// Every header extension str0m reads or writes.
const EXTENSIONS: [Extension; 12] = [
    Extension::AbsoluteSendTime,
    Extension::AbsoluteCaptureTime,
    Extension::AudioLevel,
    Extension::TransmissionTimeOffset,
    Extension::VideoOrientation,
    Extension::TransportSequenceNumber,
    Extension::PlayoutDelay,
    Extension::VideoContentType,
    Extension::VideoTiming,
    Extension::RtpStreamId,
    Extension::RepairedRtpStreamId,
    Extension::RtpMid,
];

pub fn extension(uri: &str) -> Option<Extension> {
    EXTENSIONS.iter().find(|e| e.as_uri() == uri).cloned()
}

/// A codec of an RTP parameters or capabilities object.
pub fn codec_spec(codec: &Value) -> Result<CodecSpec, String> {
    let mime = codec["mimeType"]
        .as_str()
        .ok_or("a codec has no mimeType")?;
    let name = mime.split_once('/').map(|(_, n)| n).unwrap_or(mime);
    let clock = codec["clockRate"]
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .and_then(Frequency::new)
        .ok_or_else(|| format!("{mime}: clockRate must be a positive number"))?;
    let channels = codec["channels"]
        .as_u64()
        .and_then(|c| u8::try_from(c).ok());
    let fmtp: Vec<String> = codec["parameters"]
        .as_object()
        .map(Map::iter)
        .into_iter()
        .flatten()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            v => format!("{k}={v}"),
        })
        .collect();
    Ok(CodecSpec {
        codec: Codec::from(name),
        clock_rate: clock,
        channels,
        format: FormatParams::parse_line(&fmtp.join(";")),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RtpParameters {
    mid: Option<String>,
    codecs: Vec<Value>,
    #[serde(default)]
    header_extensions: Vec<HeaderExtension>,
    #[serde(default)]
    encodings: Vec<Encoding>,
}

#[derive(Deserialize)]
struct HeaderExtension {
    uri: String,
    id: u8,
}

#[derive(Deserialize)]
struct Encoding {
    ssrc: Option<u32>,
    rid: Option<String>,
    rtx: Option<Rtx>,
}

#[derive(Deserialize)]
struct Rtx {
    ssrc: u32,
}

/// `produce`'s `{kind, rtpParameters}`.
pub fn produce(request: &Value) -> Result<Produce, String> {
    let kind = match request["kind"].as_str() {
        Some("audio") => MediaKind::Audio,
        Some("video") => MediaKind::Video,
        _ => return Err("kind must be \"audio\" or \"video\"".into()),
    };
    let rtp: RtpParameters = serde_json::from_value(request["rtpParameters"].clone())
        .map_err(|e| format!("rtpParameters: {e}"))?;
    let mid = rtp.mid.ok_or("rtpParameters.mid is missing")?;
    let pt_of = |c: &Value| c["payloadType"].as_u64().and_then(|p| u8::try_from(p).ok());
    let mut codecs = Vec::new();
    for c in &rtp.codecs {
        let spec = codec_spec(c)?;
        let pt = pt_of(c).ok_or("a codec has no payloadType")?;
        let forwardable = !matches!(
            spec.codec,
            Codec::Rtx | Codec::Red | Codec::Unknown | Codec::Null | Codec::CN | Codec::Tele
        );
        if !forwardable || spec.codec.kind() != kind {
            continue;
        }
        let rtx =
            rtp.codecs
                .iter()
                .find(|r| {
                    r["mimeType"].as_str().is_some_and(|m| {
                        m.eq_ignore_ascii_case(&format!("{}/rtx", kind_name(kind)))
                    }) && r["parameters"]["apt"].as_u64() == Some(pt.into())
                })
                .and_then(pt_of);
        codecs.push(PayloadParams::new(Pt::from(pt), rtx.map(Pt::from), spec));
    }
    let exts = rtp
        .header_extensions
        .iter()
        .filter_map(|h| Some((h.id, extension(&h.uri)?)))
        .collect();
    let rids: Vec<String> = rtp.encodings.iter().filter_map(|e| e.rid.clone()).collect();
    let ssrcs = if rids.is_empty() {
        rtp.encodings
            .iter()
            .filter_map(|e| Some((e.ssrc?, e.rtx.as_ref().map(|r| r.ssrc))))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Produce {
        mid,
        kind,
        codecs,
        exts,
        rids,
        ssrcs,
    })
}

fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

/// `connect*Transport`'s `dtlsParameters`: the client's fingerprint, and
/// whether it wants to be the DTLS server (it never does with `role: auto`).
pub fn dtls(params: &Value) -> Result<(Fingerprint, bool), String> {
    let fingerprints = params["fingerprints"]
        .as_array()
        .ok_or("dtlsParameters.fingerprints is missing")?;
    let fingerprint = fingerprints
        .iter()
        .find(|f| f["algorithm"] == "sha-256")
        .ok_or("dtlsParameters has no sha-256 fingerprint")?;
    let value = fingerprint["value"].as_str().unwrap_or_default();
    let parsed = format!("sha-256 {value}")
        .parse::<Fingerprint>()
        .ok()
        .filter(|f| f.bytes.len() == 32)
        .ok_or_else(|| format!("'{value}' is not a sha-256 fingerprint (32 bytes in hex)"))?;
    Ok((parsed, params["role"] == "server"))
}

/// The payload types a client's `rtpCapabilities` can receive.
pub fn device_pts(caps: &Value) -> Vec<u8> {
    caps["codecs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["preferredPayloadType"].as_u64())
        .filter_map(|p| u8::try_from(p).ok())
        .collect()
}

/// The answer to `create*Transport`.
pub fn transport(t: &DirectTransport, ice_servers: Option<Value>) -> Value {
    let candidates: Vec<Value> = t
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let addr = c.addr();
            let tcp = c.proto() == str0m::net::Protocol::Tcp;
            let mut j = json!({
                "foundation": format!("{}{i}", if tcp { "tcp" } else { "udp" }),
                "priority": c.prio(),
                "ip": addr.ip().to_string(),
                "address": addr.ip().to_string(),
                "protocol": if tcp { "tcp" } else { "udp" },
                "port": addr.port(),
                "type": "host",
            });
            if tcp {
                j["tcpType"] = json!("passive");
            }
            j
        })
        .collect();
    let fingerprint = t.fingerprint.to_string();
    let (algorithm, value) = fingerprint.split_once(' ').unwrap_or(("sha-256", ""));
    let mut reply = json!({
        "id": t.peer.to_string(),
        "iceParameters": {"usernameFragment": t.ice.ufrag, "password": t.ice.pass, "iceLite": true},
        "iceCandidates": candidates,
        "dtlsParameters": {"role": "auto", "fingerprints": [{"algorithm": algorithm, "value": value}]},
    });
    // mediasoup-client takes `iceServers` when creating a transport; the
    // seed passes this reply through, so its users get TURN unasked.
    if let Some(servers) = ice_servers {
        reply["iceServers"] = servers;
    }
    reply
}

/// The answer to `consume`. Codecs come from the router's capabilities,
/// which are the viewer session's own payload types; header extensions are
/// those the device can receive (`device`: its `rtpCapabilities`).
pub fn consumer(c: &Consumer, stream: &str, device: &Value) -> Value {
    let kind = kind_name(c.producer.kind);
    let as_param = |cap: &Value| {
        json!({"mimeType": cap["mimeType"], "payloadType": cap["preferredPayloadType"],
               "clockRate": cap["clockRate"], "parameters": cap["parameters"],
               "rtcpFeedback": cap["rtcpFeedback"]})
    };
    let all = caps::codecs();
    let find = |pt: Pt| all.iter().find(|cap| cap["preferredPayloadType"] == *pt);
    let mut codecs = Vec::new();
    if let Some(main) = find(c.params.pt()) {
        let mut p = as_param(main);
        if let Some(ch) = main.get("channels") {
            p["channels"] = ch.clone();
        }
        codecs.push(p);
    }
    if let Some(rtx) = c.params.resend().and_then(find) {
        codecs.push(as_param(rtx));
    }
    let exts: Vec<Value> = caps::HEADER_EXTENSIONS
        .iter()
        .filter(|(k, uri, _, dir)| {
            *k == kind
                && *dir == "sendrecv"
                && device["headerExtensions"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|e| e["kind"] == *k && e["uri"] == *uri))
        })
        .map(|(_, uri, id, _)| json!({"uri": uri, "id": id, "encrypt": false, "parameters": {}}))
        .collect();
    let mut encoding = json!({"ssrc": c.ssrc});
    if let Some(rtx) = c.rtx_ssrc {
        encoding["rtx"] = json!({"ssrc": rtx});
    }
    json!({
        "id": c.id,
        "producerId": c.producer.id,
        "kind": kind,
        "type": if c.producer.simulcast { "simulcast" } else { "simple" },
        "producerPaused": false,
        "rtpParameters": {
            "mid": c.mid,
            "codecs": codecs,
            "headerExtensions": exts,
            "encodings": [encoding],
            "rtcp": {"cname": c.cname, "reducedSize": true},
            // One stream id for a viewer's audio and video puts them in
            // one MediaStream.
            "msid": format!("{stream} {}", c.id),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Chrome 156 sends for the seed's `produce` (video, three layers).
    fn chrome_video() -> Value {
        json!({"transportId": "x", "kind": "video", "rtpParameters": {"mid": "0",
          "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000, "parameters": {},
            "rtcpFeedback": [{"type": "goog-remb", "parameter": ""}, {"type": "transport-cc", "parameter": ""},
              {"type": "ccm", "parameter": "fir"}, {"type": "nack", "parameter": ""}, {"type": "nack", "parameter": "pli"}]},
            {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000, "parameters": {"apt": 96}, "rtcpFeedback": []}],
          "headerExtensions": [
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 9, "encrypt": false, "parameters": {}},
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "id": 10, "encrypt": false, "parameters": {}},
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id", "id": 11, "encrypt": false, "parameters": {}},
            {"uri": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time", "id": 2, "encrypt": false, "parameters": {}},
            {"uri": "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01", "id": 4, "encrypt": false, "parameters": {}},
            {"uri": "urn:3gpp:video-orientation", "id": 3, "encrypt": false, "parameters": {}},
            {"uri": "urn:example:not-known", "id": 5, "encrypt": false, "parameters": {}}],
          "encodings": [
            {"active": true, "maxBitrate": 100000, "rid": "r0", "scalabilityMode": "L1T3", "dtx": false},
            {"active": true, "maxBitrate": 300000, "rid": "r1", "scalabilityMode": "L1T3", "dtx": false},
            {"active": true, "maxBitrate": 900000, "rid": "r2", "scalabilityMode": "L1T3", "dtx": false}],
          "rtcp": {"cname": "", "reducedSize": true}, "msid": "a b"}})
    }

    #[test]
    fn chrome_s_simulcast_producer_is_read_with_its_own_ids() {
        let p = produce(&chrome_video()).unwrap();
        assert_eq!((p.mid.as_str(), p.kind), ("0", MediaKind::Video));
        assert_eq!(p.codecs.len(), 1, "rtx folds into VP8");
        assert_eq!(
            (*p.codecs[0].pt(), p.codecs[0].resend().map(|p| *p)),
            (96, Some(97))
        );
        assert_eq!(p.codecs[0].spec().codec, Codec::Vp8);
        assert_eq!(p.rids, ["r0", "r1", "r2"]);
        assert!(p.ssrcs.is_empty());
        let ids: Vec<(u8, &str)> = p.exts.iter().map(|(id, e)| (*id, e.as_uri())).collect();
        assert!(
            ids.contains(&(9, "urn:ietf:params:rtp-hdrext:sdes:mid")),
            "{ids:?}"
        );
        assert_eq!(ids.len(), 6, "the unknown extension is left out: {ids:?}");
    }

    #[test]
    fn an_audio_producer_names_its_ssrc() {
        let p = produce(&json!({"kind": "audio", "rtpParameters": {"mid": "1",
            "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2,
                        "parameters": {"minptime": 10, "useinbandfec": 1}}],
            "encodings": [{"ssrc": 1582342931u32, "dtx": false}]}}))
        .unwrap();
        assert_eq!(p.ssrcs, [(1582342931, None)]);
        assert_eq!(p.codecs[0].spec().codec, Codec::Opus);
        assert_eq!(p.codecs[0].spec().format.use_inband_fec, Some(true));
    }

    #[test]
    fn bad_produce_requests_say_what_is_wrong() {
        let e = produce(&json!({"kind": "text"})).unwrap_err();
        assert!(e.contains("kind"), "{e}");
        let e = produce(&json!({"kind": "video", "rtpParameters": {"codecs": []}})).unwrap_err();
        assert!(e.contains("mid"), "{e}");
        let e = produce(&json!({"kind": "video", "rtpParameters": {"mid": "0", "codecs": "VP8"}}))
            .unwrap_err();
        assert!(e.contains("rtpParameters"), "{e}");
    }

    #[test]
    fn a_client_fingerprint_is_read_in_either_case() {
        let hex = "9F:F5:".repeat(15) + "9f:f5";
        let (fp, server) = dtls(
            &json!({"role": "client", "fingerprints": [{"algorithm": "sha-256", "value": hex}]}),
        )
        .unwrap();
        assert_eq!(fp.bytes.len(), 32);
        assert!(!server);
        assert!(dtls(&json!({"fingerprints": [{"algorithm": "sha-1", "value": "AB"}]})).is_err());
        let short = json!({"fingerprints": [{"algorithm": "sha-256", "value": "AB:CD"}]});
        assert!(dtls(&short).unwrap_err().contains("32 bytes"));
        assert!(dtls(&json!({})).is_err());
    }
}
