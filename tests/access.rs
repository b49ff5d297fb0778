//! Who may cast and watch, on the real binary: stream keys, the admin API,
//! private lives with viewer tokens, and the admission webhook.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{Client, Server, http, live_goes_on, run_all_until, webhook};
use serde_json::{Value, json};

const ADMIN: &str = "admin-secret-for-tests";
const VIEWER_SECRET: &str = "viewer-secret-for-tests";

fn refused(server: &Server, path: &str, bearer: Option<&str>) -> (u16, String) {
    match Client::try_connect(server, path, bearer) {
        Ok(_) => panic!("POST {path} with {bearer:?} must be refused"),
        Err(e) => e,
    }
}

/// Casts until a viewer receives video: the live works.
fn cast_and_watch(
    server: &Server,
    live: &str,
    key: Option<&str>,
    token: Option<&str>,
) -> (Client, Client) {
    let mut caster = Client::try_connect(server, &format!("/whip/{live}"), key).unwrap();
    let mut viewer = Client::try_connect(server, &format!("/whep/{live}"), token).unwrap();
    run_all_until(
        &mut [&mut caster, &mut viewer],
        Duration::from_secs(15),
        "video flows",
        |c| c[1].video().len() >= 10,
    );
    (caster, viewer)
}

fn admin_post(server: &Server, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = http()
        .post(server.url(path))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = req.body(body.to_string()).send().unwrap();
    let status = res.status().as_u16();
    let text = res.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn an_exposed_server_needs_a_stream_key_and_a_wrong_key_disturbs_nothing() {
    // HTTP on every interface: casting needs a key. (Clients still connect
    // over loopback.)
    let server = Server::start_full("0.0.0.0", &["--admin-token", ADMIN], &[]);
    let (status, reason) = refused(&server, "/whip/show", None);
    assert_eq!(status, 401, "{reason}");
    assert!(
        reason.contains("stream key") && reason.contains("open = true"),
        "{reason}"
    );

    // The admin API needs its token on an exposed server.
    let (status, _) = admin_post(&server, "/api/lives", None, json!({"live": "show"}));
    assert_eq!(status, 401);
    let (status, _) = admin_post(
        &server,
        "/api/lives",
        Some("wrong"),
        json!({"live": "show"}),
    );
    assert_eq!(status, 401);
    let (status, body) = admin_post(
        &server,
        "/api/lives",
        Some(ADMIN),
        json!({"live": "bad name"}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin_post(&server, "/api/lives", Some(ADMIN), json!({"live": "show"}));
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().unwrap().to_string();
    assert_eq!(body["whip"], "/whip/show");

    let (mut caster, mut viewer) = cast_and_watch(&server, "show", Some(&key), None);

    // A wrong key is refused with a reason, and the live goes on.
    let (status, reason) = refused(&server, "/whip/show", Some("not-the-key"));
    assert_eq!(status, 401);
    assert!(reason.contains("wrong stream key"), "{reason}");
    live_goes_on(&mut caster, &mut viewer);
    assert!(!caster.closed);
}

#[test]
fn a_revoked_key_is_refused_and_its_cast_ends() {
    let server = Server::start_with_args(&["--admin-token", ADMIN]);
    let (_, body) = admin_post(&server, "/api/lives", Some(ADMIN), json!({"live": "rev"}));
    let key = body["key"].as_str().unwrap().to_string();
    // A live with a key needs it even on a loopback-only server.
    assert_eq!(refused(&server, "/whip/rev", None).0, 401);
    let (mut caster, mut viewer) = cast_and_watch(&server, "rev", Some(&key), None);

    let res = http()
        .delete(server.url("/api/lives/rev"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .unwrap();
    assert_eq!(res.status(), 204);
    run_all_until(
        &mut [&mut caster, &mut viewer],
        Duration::from_secs(10),
        "the cast ends",
        |c| c[0].closed,
    );
    // The key is gone; the live is open again on this loopback-only server,
    // but the old key is not what opens it: a second DELETE finds nothing.
    let res = http()
        .delete(server.url("/api/lives/rev"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[test]
fn keys_from_the_config_file_and_a_revoked_key_on_an_exposed_server() {
    let dir = std::env::temp_dir().join(format!("vessel-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vessel.toml");
    std::fs::write(
        &config,
        format!("admin-token = \"{ADMIN}\"\n\n[lives.fromfile]\nkey = \"file-key-123456\"\n"),
    )
    .unwrap();
    let server = Server::start_full("0.0.0.0", &["--config", config.to_str().unwrap()], &[]);
    assert_eq!(
        refused(&server, "/whip/fromfile", Some("wrong-key-123")).0,
        401
    );
    let (caster, _viewer) = cast_and_watch(&server, "fromfile", Some("file-key-123456"), None);
    drop(caster);
    let res = http()
        .delete(server.url("/api/lives/fromfile"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .unwrap();
    assert_eq!(res.status(), 204);
    // Exposed and revoked: the old key no longer casts.
    let (status, reason) = refused(&server, "/whip/fromfile", Some("file-key-123456"));
    assert_eq!(status, 401, "{reason}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_private_live_admits_only_valid_tokens_for_it() {
    let server = Server::start_with_args(&[
        "--admin-token",
        ADMIN,
        "--viewer-token-secret",
        VIEWER_SECRET,
    ]);
    let (_, body) = admin_post(
        &server,
        "/api/lives",
        Some(ADMIN),
        json!({"live": "vip", "private": true}),
    );
    let key = body["key"].as_str().unwrap().to_string();
    let (status, body) = admin_post(
        &server,
        "/api/lives/vip/tokens",
        Some(ADMIN),
        json!({"ttl": 600}),
    );
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_string();

    let (status, reason) = refused(&server, "/whep/vip", None);
    assert_eq!(
        (status, reason.contains("private")),
        (401, true),
        "{reason}"
    );

    let sign = |secret: &str, claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = sign(VIEWER_SECRET, json!({"live": "vip", "exp": now - 10}));
    let (status, reason) = refused(&server, "/whep/vip", Some(&expired));
    assert_eq!(
        (status, reason.contains("expired")),
        (401, true),
        "{reason}"
    );
    let forged = sign(
        "someone-elses-secret",
        json!({"live": "vip", "exp": now + 600}),
    );
    let (status, reason) = refused(&server, "/whep/vip", Some(&forged));
    assert_eq!(
        (status, reason.contains("signature")),
        (401, true),
        "{reason}"
    );
    let other_live = sign(VIEWER_SECRET, json!({"live": "other", "exp": now + 600}));
    assert_eq!(refused(&server, "/whep/vip", Some(&other_live)).0, 401);

    // A token made by the streamer's own site (same secret) and one from the
    // admin API both play.
    let own = sign(VIEWER_SECRET, json!({"live": "vip", "exp": now + 600}));
    let (_caster, _viewer) = cast_and_watch(&server, "vip", Some(&key), Some(&own));
    let mut second = Client::try_connect(&server, "/whep/vip", Some(&token)).unwrap();
    run_all_until(
        &mut [&mut second],
        Duration::from_secs(10),
        "connected",
        |c| c[0].connected,
    );

    // Private lives stay out of the public listing.
    let lives = http()
        .get(server.url("/api/lives"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!lives.to_string().contains("vip"), "{lives}");

    // Its state (on air, viewers) is for token holders and its caster.
    let state = |auth: Option<&str>, query: &str| {
        let mut req = http().get(server.url(&format!("/api/lives/vip{query}")));
        if let Some(t) = auth {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let res = req.send().unwrap();
        (res.status().as_u16(), res.text().unwrap())
    };
    let (status, body) = state(None, "");
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("onAir"), "{body}");
    assert_eq!(state(None, "/events").0, 401, "nor its event stream");
    assert_eq!(state(Some(&other_live), "").0, 401);
    let (status, body) = state(Some(&token), "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"onAir\":true"), "{body}");
    assert_eq!(state(None, &format!("?token={token}")).0, 200);
    assert_eq!(state(Some(&key), "").0, 200, "the stream key too");
}

#[test]
fn the_admission_webhook_decides_and_is_told_who_asks() {
    let (url, seen) = webhook();
    let server = Server::start_with_args(&["--admission-webhook", &url]);
    let _caster = Client::connect(&server, "/whip/hooked");
    let (status, reason) = refused(&server, "/whep/hooked", None);
    assert_eq!(status, 403);
    assert!(
        reason.contains("viewers from there are not allowed"),
        "{reason}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0]["live"], "hooked");
    assert_eq!(seen[0]["role"], "cast");
    assert_eq!(seen[0]["protocol"], "whip");
    assert!(
        seen[0]["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(seen[1]["role"], "play");

    // A webhook that does not answer fails closed, with 503.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/", dead.local_addr().unwrap());
    drop(dead);
    let server = Server::start_with_args(&["--admission-webhook", &dead_url]);
    assert_eq!(refused(&server, "/whip/hooked", None).0, 503);
}

#[test]
fn bad_admin_requests_get_a_reason_and_the_live_goes_on() {
    let server = Server::start_with_args(&["--admin-token", ADMIN]);
    let (mut caster, mut viewer) = cast_and_watch(&server, "steady", None, None);
    let raw = |path: &str, body: &str| {
        let res = http()
            .post(server.url(path))
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        (res.status().as_u16(), res.text().unwrap())
    };
    let (status, reason) = raw("/api/lives", "{not json");
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("expected {\"live\""), "{reason}");
    let (status, reason) = raw("/api/lives", r#"{"live": "steady", "colour": "red"}"#);
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("colour"), "{reason}");
    let (status, reason) = raw("/api/lives/steady/tokens", r#"{"ttl": 0}"#);
    assert_eq!(status, 400, "{reason}");
    // No viewer-token-secret: tokens cannot be made, and it says why.
    let (status, reason) = raw("/api/lives/steady/tokens", "{}");
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("viewer-token-secret"), "{reason}");
    let res = http()
        .delete(server.url("/api/lives/steady"))
        .header("authorization", "Bearer wrong")
        .send()
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
    live_goes_on(&mut caster, &mut viewer);
}
