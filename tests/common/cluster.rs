//! Cluster test helpers: a `redis-server` of the test's own, `vessel`
//! nodes joined to it, and readers of the cluster APIs.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Client, Server, http};

/// A `redis-server` of the test's own, without persistence.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn node(redis: &Redis, capacity: u32) -> Server {
    node_with(redis, capacity, &[])
}

/// A node with more flags.
pub fn node_with(redis: &Redis, capacity: u32, extra: &[&str]) -> Server {
    let capacity = capacity.to_string();
    let url = redis.url();
    let mut args = vec![
        "--workers",
        "1",
        "--cluster",
        &url,
        "--cluster-secret",
        "s3cret",
        "--node-capacity",
        &capacity,
    ];
    args.extend_from_slice(extra);
    Server::start_with_args(&args)
}

pub fn get(server: &Server, path: &str) -> (u16, String) {
    let res = http().get(server.url(path)).send().unwrap();
    (res.status().as_u16(), res.text().unwrap())
}

pub fn json(server: &Server, path: &str) -> Value {
    let (status, body) = get(server, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// This node's id, as it tells in `/api/cluster`.
pub fn id_of(server: &Server) -> String {
    json(server, "/api/cluster")["node"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Fresh nodes `server` sees in `/api/cluster`, by id.
pub fn fresh_nodes(server: &Server) -> Vec<String> {
    let (status, body) = get(server, "/api/cluster");
    if status != 200 {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<String> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["fresh"] == true)
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

pub fn poll(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/api/origin?live=` as (node, epoch), if there is one.
pub fn origin(server: &Server, live: &str) -> Option<(String, u64)> {
    let (status, body) = get(server, &format!("/api/origin?live={live}"));
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    Some((
        v["node"].as_str().unwrap().to_string(),
        v["epoch"].as_u64().unwrap(),
    ))
}

/// Viewer sessions of `live` on `server` itself, relays to edges included
/// (`viewersHere` in its API: `viewers` is the cluster's people).
pub fn viewers(server: &Server, live: &str) -> u64 {
    super::live_state(server, live)["viewersHere"]
        .as_u64()
        .unwrap_or(0)
}

/// People watching `live` in the whole cluster, as `server`'s API tells.
pub fn total_viewers(server: &Server, live: &str) -> u64 {
    super::live_state(server, live)["viewers"]
        .as_u64()
        .unwrap_or(0)
}

/// Runs `caster` until `live`'s origin, as `on` tells, is `node`.
pub fn until_origin(caster: &mut Client, on: &Server, live: &str, node: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((n, epoch)) = origin(on, live)
            && n == node
        {
            return epoch;
        }
        assert!(Instant::now() < deadline, "origin of {live} on {node}");
        caster.run(Duration::from_millis(100));
    }
}
