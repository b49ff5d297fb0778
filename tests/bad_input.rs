//! Bad input gets a 4xx with a reason, never a panic, and a live on air is
//! not disturbed by any of it.

mod common;

use std::time::Duration;

use common::{Client, Server, http, run_all_until};

const LIMIT: Duration = Duration::from_secs(15);

/// An offer that only opens a data channel: no audio, no video.
const DATA_ONLY_OFFER: &str = "v=0\r\n\
o=- 1 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sctp-port:5000\r\n";

/// A viewer's offer that could connect: the cases below break one thing.
const AUDIO_OFFER: &str = "v=0\r\n\
o=- 1 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n";

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    reason: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    reason: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.to_string(),
        content_type,
        body: body.into(),
        status,
        reason,
    }
}

#[test]
fn bad_requests_are_refused_with_a_reason_and_the_live_goes_on() {
    let mut server = Server::start();
    let mut caster = Client::connect(&server, "/whip/onair");
    let mut viewer = Client::connect(&server, "/whep/onair");
    run_all_until(&mut [&mut viewer, &mut caster], LIMIT, "media flows", |c| {
        c[0].video().len() >= 30
    });

    let sdp = Some("application/sdp");
    let frag = Some("application/trickle-ice-sdpfrag");
    let _json = Some("application/json");
    let unknown = "/whip/onair/0123456789abcdef0123456789abcdef";
    let viewer_session = viewer.location.clone();
    let cases = [
        case(
            "wrong content type",
            "POST",
            "/whip/onair",
            Some("text/plain"),
            "v=0",
            415,
            "application/sdp",
        ),
        case(
            "no content type",
            "POST",
            "/whep/onair",
            None,
            "v=0",
            415,
            "application/sdp",
        ),
        case(
            "malformed SDP",
            "POST",
            "/whip/onair",
            sdp,
            "this is not sdp",
            400,
            "malformed SDP",
        ),
        case(
            "truncated SDP",
            "POST",
            "/whep/onair",
            sdp,
            "v=0\r\no=- 1 2 IN IP4",
            400,
            "malformed SDP",
        ),
        case(
            "empty body",
            "POST",
            "/whip/onair",
            sdp,
            "",
            400,
            "empty SDP offer",
        ),
        case(
            "not UTF-8",
            "POST",
            "/whip/onair",
            sdp,
            vec![0xff, 0xfe, 0x00],
            400,
            "UTF-8",
        ),
        case(
            "no audio or video (cast)",
            "POST",
            "/whip/onair",
            sdp,
            DATA_ONLY_OFFER,
            400,
            "no audio or video",
        ),
        case(
            "no audio or video (play)",
            "POST",
            "/whep/onair",
            sdp,
            DATA_ONLY_OFFER,
            400,
            "no audio or video",
        ),
        case(
            "oversized body",
            "POST",
            "/whip/onair",
            sdp,
            vec![b'a'; 200_000],
            413,
            "length limit",
        ),
        case(
            "bad live name",
            "POST",
            "/whip/no%20spaces",
            sdp,
            "v=0",
            400,
            "invalid live name",
        ),
        case(
            "unknown session PATCH",
            "PATCH",
            unknown,
            frag,
            "a=end-of-candidates\r\n",
            404,
            "no such session",
        ),
        case(
            "unknown session DELETE",
            "DELETE",
            unknown,
            None,
            "",
            404,
            "no such session",
        ),
        case(
            "malformed session id",
            "DELETE",
            "/whip/onair/xyz",
            None,
            "",
            404,
            "no such session",
        ),
        case(
            "session of another role",
            "DELETE",
            &viewer_session.replace("/whep/", "/whip/"),
            None,
            "",
            404,
            "no such session",
        ),
        case(
            "session of another live",
            "DELETE",
            &viewer_session.replace("/onair/", "/other/"),
            None,
            "",
            404,
            "no such session",
        ),
        case(
            "PATCH wrong content type",
            "PATCH",
            &viewer_session,
            Some("application/sdp"),
            "a=x",
            415,
            "trickle-ice-sdpfrag",
        ),
        case(
            "PATCH bad candidate",
            "PATCH",
            &viewer_session,
            frag,
            "a=candidate:nonsense\r\n",
            400,
            "bad candidate",
        ),
    ];
    let layer = format!("{viewer_session}/layer");
    let json = Some("application/json");
    #[rustfmt::skip]
    let more = [
        case("layer: unknown value", "POST", &layer, json, r#"{"layer":"ultra"}"#, 400, "expected"),
        case("layer: not JSON", "POST", &layer, json, "low", 400, "expected"),
        case("layer: wrong content type", "POST", &layer, Some("text/plain"), r#"{"layer":"low"}"#, 415, "application/json"),
        case("layer: unknown session", "POST", "/whep/onair/0123456789abcdef0123456789abcdef/layer", json, r#"{"layer":"low"}"#, 404, "no such session"),
        case("layer: a caster's session", "POST", &format!("{}/layer", caster.location), json, r#"{"layer":"low"}"#, 404, "nothing at"),
        case("unknown path", "GET", "/nope", None, "", 404, "nothing at /nope"),
        case("unsupported method", "PUT", "/whip/onair", sdp, "v=0", 405, "PUT is not supported"),
        // Offers that parse but could never connect: 400, not a session
        // that holds a key pair until it times out.
        case("offer without ice-pwd", "POST", "/whep/onair", sdp, AUDIO_OFFER.replace("a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", ""), 400, "ice-pwd"),
        case("offer with a short fingerprint", "POST", "/whep/onair", sdp, AUDIO_OFFER.replace(":EE:FF\r\nm=", "\r\nm="), 400, "fingerprint"),
        case("offer with only port-0 m-lines", "POST", "/whep/onair", sdp, AUDIO_OFFER.replace("m=audio 9 ", "m=audio 0 "), 400, "port 0"),
    ];
    let cases: Vec<Case> = cases.into_iter().chain(more).collect();
    assert_eq!(cases.len(), 27, "every case above is run");

    let client = http();
    for c in &cases {
        let mut req = client.request(c.method.parse().unwrap(), server.url(&c.path));
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let res = req.body(c.body.clone()).send().unwrap();
        let status = res.status().as_u16();
        let text = res.text().unwrap();
        assert_eq!(status, c.status, "{}: {text}", c.what);
        assert!(
            text.contains(c.reason),
            "{}: reason should mention '{}', got '{text}'",
            c.what,
            c.reason
        );
        // Keep the live moving between requests.
        common::run_all(&mut [&mut viewer, &mut caster], Duration::from_millis(20));
    }

    // A valid trickle on the real session is accepted.
    let res = client
        .patch(server.url(&viewer_session))
        .header("content-type", "application/trickle-ice-sdpfrag")
        .body("a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n")
        .send()
        .unwrap();
    assert_eq!(res.status(), 204);

    // The live went on through all of it.
    let before = viewer.video().len();
    run_all_until(
        &mut [&mut viewer, &mut caster],
        LIMIT,
        "media still flows",
        |c| c[0].video().len() >= before + 30,
    );
    assert!(server.is_running(), "the server survived");
    assert!(
        !server.log_text().contains("panicked"),
        "no panic in the log"
    );
}

#[test]
fn cors_preflight_allows_embedding_and_exposes_location() {
    let server = Server::start();
    let res = http()
        .request(reqwest::Method::OPTIONS, server.url("/whep/demo"))
        .header("origin", "https://example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    for m in ["POST", "PATCH", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let res = http()
        .post(server.url("/whep/demo"))
        .header("origin", "https://example.com")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .unwrap();
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("location") && exposed.contains("link"),
        "{exposed}"
    );
}
