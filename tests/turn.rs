//! The built-in STUN/TURN server against coturn's own test client,
//! `turnutils_uclient` (Debian package `coturn`), over loopback.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Client, Server, http};

const SECRET: &str = "integration-secret";

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is missing: install the Debian package `coturn` (scripts/test does)"
    );
}

/// coturn's UDP echo peer on a free loopback port.
struct EchoPeer {
    child: Child,
    port: u16,
}

impl EchoPeer {
    fn start() -> Self {
        require("turnutils_peer");
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer starts");
        std::thread::sleep(Duration::from_millis(200));
        EchoPeer { child, port }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `/api/ice-servers` answer.
fn ice_servers(server: &Server) -> serde_json::Value {
    let r = http().get(server.url("/api/ice-servers")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    serde_json::from_str(&r.text().unwrap()).unwrap()
}

/// The STUN/TURN port, from the `stun:` URL Vessel hands out.
fn turn_port(server: &Server) -> u16 {
    let servers = ice_servers(server);
    let stun = servers["iceServers"][0]["urls"][0].as_str().unwrap();
    stun.rsplit(':').next().unwrap().parse().unwrap()
}

struct Run {
    output: String,
}

impl Run {
    fn sent_and_received(&self) -> (u64, u64) {
        let line = self
            .output
            .lines()
            .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
            .unwrap_or_else(|| panic!("no totals in uclient output:\n{}", self.output));
        let num = |key: &str| -> u64 {
            let at = line.find(key).unwrap() + key.len();
            line[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .unwrap()
        };
        (num("tot_send_msgs="), num("tot_recv_msgs="))
    }

    fn assert_no_loss(&self) {
        let (sent, received) = self.sent_and_received();
        assert!(sent > 0, "nothing sent:\n{}", self.output);
        assert_eq!(sent, received, "messages lost:\n{}", self.output);
        assert!(
            self.output.contains("Total lost packets 0 (0.000000%)"),
            "{}",
            self.output
        );
    }

    fn assert_refused(&self, what: &str) {
        assert!(
            self.output.contains(what) && !self.output.contains("Total lost packets"),
            "expected `{what}`:\n{}",
            self.output
        );
    }
}

/// `turnutils_uclient` with `-c` (no RTCP twin allocations: WebRTC does not
/// reserve port pairs, and neither does Vessel).
fn uclient(port: u16, args: &[&str]) -> Run {
    require("turnutils_uclient");
    let out = Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args(["-c", "-p", &port.to_string()])
        .args(args)
        .arg("127.0.0.1")
        .output()
        .expect("turnutils_uclient runs");
    Run {
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn server_relaying_to_loopback() -> Server {
    Server::start_with_args(&["--turn-secret", SECRET, "--turn-allow-peer", "127.0.0.1/32"])
}

#[test]
fn rest_credentials_relay_every_message_over_udp_and_tcp() {
    let server = server_relaying_to_loopback();
    let peer = EchoPeer::start();
    let port = turn_port(&server);
    let peer_port = peer.port.to_string();
    let common = [
        "-W",
        SECRET,
        "-u",
        "uclient",
        "-n",
        "100",
        "-m",
        "4",
        "-e",
        "127.0.0.1",
    ];
    for transport in [&[][..], &["-t"][..]] {
        let mut args: Vec<&str> = common.to_vec();
        args.extend(["-r", &peer_port]);
        args.extend(transport);
        uclient(port, &args).assert_no_loss();
    }
    // Send indications instead of channels, and allocations relaying to
    // each other.
    let mut args: Vec<&str> = common.to_vec();
    args.extend(["-r", &peer_port, "-s"]);
    uclient(port, &args).assert_no_loss();
    uclient(
        port,
        &["-W", SECRET, "-u", "uclient", "-n", "50", "-m", "2", "-y"],
    )
    .assert_no_loss();
    // /metrics counts what was relayed (TURN threads publish once a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let relayed = common::metric(&server, "vessel_turn_relayed_bytes_total").unwrap_or(0.0);
        if relayed > 100.0 * 4.0 * 100.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "relayed bytes not counted: {relayed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn wrong_and_expired_credentials_are_refused() {
    let server = server_relaying_to_loopback();
    let peer = EchoPeer::start();
    let port = turn_port(&server);
    let peer_port = peer.port.to_string();
    let base = ["-n", "5", "-e", "127.0.0.1", "-r", &peer_port];

    let mut wrong = vec!["-W", "not-the-secret", "-u", "uclient"];
    wrong.extend(base);
    uclient(port, &wrong).assert_refused("Cannot complete Allocation");

    // Correctly signed, but its expiry (Unix time 1000) has passed.
    let expired_user = "1000:uclient";
    let password = vessel::turn::credentials::rest_password(SECRET, expired_user);
    let mut expired = vec!["-u", expired_user, "-w", &password];
    expired.extend(base);
    uclient(port, &expired).assert_refused("Cannot complete Allocation");
    assert!(
        server.log_text().contains("credentials expired"),
        "{}",
        server.log_text()
    );
    assert!(
        server.log_text().contains("message integrity check failed"),
        "{}",
        server.log_text()
    );

    // The same scheme with a future expiry works: the refusal was the expiry.
    let fresh_user = "99999999999:uclient";
    let password = vessel::turn::credentials::rest_password(SECRET, fresh_user);
    let mut fresh = vec!["-u", fresh_user, "-w", &password];
    fresh.extend(base);
    uclient(port, &fresh).assert_no_loss();
}

#[test]
fn peers_outside_the_allowed_ranges_get_403() {
    // No --turn-allow-peer: relays may reach only Vessel's media address.
    let server = Server::start_with_args(&["--turn-secret", SECRET]);
    let peer = EchoPeer::start();
    let port = turn_port(&server);
    let peer_port = peer.port.to_string();
    let args = [
        "-W",
        SECRET,
        "-u",
        "uclient",
        "-n",
        "5",
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
    ];
    uclient(port, &args).assert_refused("error 403");
}

#[test]
fn turn_over_tls() {
    let dir = std::env::temp_dir().join(format!("vessel-turn-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = common::self_signed_cert(&dir);
    let server = Server::start_with_args(&[
        "--turn-secret",
        SECRET,
        "--turn-allow-peer",
        "127.0.0.1/32",
        "--turn-tls",
        "127.0.0.1:0",
        "--turn-tls-cert",
        cert.to_str().unwrap(),
        "--turn-tls-key",
        key.to_str().unwrap(),
    ]);
    let servers = ice_servers(&server);
    let turns = servers["iceServers"][1]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .find(|u| u.starts_with("turns:"))
        .expect("a turns: URL")
        .to_string();
    let tls_port: u16 = turns
        .trim_start_matches("turns:127.0.0.1:")
        .trim_end_matches("?transport=tcp")
        .parse()
        .unwrap();
    let peer = EchoPeer::start();
    let peer_port = peer.port.to_string();
    let args = [
        "-t",
        "-S",
        "-W",
        SECRET,
        "-u",
        "uclient",
        "-n",
        "50",
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
    ];
    uclient(tls_port, &args).assert_no_loss();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ice_servers_come_with_working_credentials() {
    let server = server_relaying_to_loopback();
    let servers = ice_servers(&server);
    let list = servers["iceServers"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{servers}");
    let port = turn_port(&server);
    assert_eq!(list[0]["urls"][0], format!("stun:127.0.0.1:{port}"));
    assert_eq!(
        list[1]["urls"],
        serde_json::json!([
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp")
        ])
    );
    let user = list[1]["username"].as_str().unwrap();
    let credential = list[1]["credential"].as_str().unwrap();
    let (expiry, _) = user.split_once(':').unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ttl = expiry.parse::<u64>().unwrap() - now;
    assert!(
        (86_000..=86_400).contains(&ttl),
        "a day by default, got {ttl}"
    );

    // A real TURN client allocates with them.
    let peer = EchoPeer::start();
    let peer_port = peer.port.to_string();
    uclient(
        port,
        &[
            "-u",
            user,
            "-w",
            credential,
            "-n",
            "20",
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port,
        ],
    )
    .assert_no_loss();

    // WHIP and WHEP answers carry the same servers as Link headers.
    let mut caster = Client::connect(&server, "/whip/links");
    let viewer = Client::connect(&server, "/whep/links");
    for client in [&caster, &viewer] {
        let ice: Vec<&String> = client
            .links
            .iter()
            .filter(|l| l.contains("rel=\"ice-server\""))
            .collect();
        assert_eq!(ice.len(), 3, "{:?}", client.links);
        assert_eq!(
            *ice[0],
            format!("<stun:127.0.0.1:{port}>; rel=\"ice-server\"")
        );
        assert!(ice[1].starts_with(&format!(
            "<turn:127.0.0.1:{port}?transport=udp>; rel=\"ice-server\"; username=\""
        )));
        assert!(ice[2].contains("credential-type=\"password\""));
    }
    caster.run(Duration::from_millis(100));
}

#[test]
fn without_turn_no_ice_servers_are_offered() {
    let server = Server::start_with_args(&["--no-turn"]);
    assert_eq!(
        ice_servers(&server),
        // `hls`: the server packages LL-HLS (casters then prefer H.264).
        serde_json::json!({ "iceServers": [], "hls": true })
    );
    let viewer = Client::connect(&server, "/whep/quiet");
    assert!(
        !viewer.links.iter().any(|l| l.contains("ice-server")),
        "{:?}",
        viewer.links
    );
}
