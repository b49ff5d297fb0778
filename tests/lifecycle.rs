//! Starting and stopping the real binary.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{Client, Server, http, run_all_until};

#[test]
fn sigterm_ends_promptly_even_with_event_streams_open() {
    let mut server = Server::start();
    // A page's live-state stream stays open until the server ends it.
    let mut events = http()
        .get(server.url("/api/lives/demo/events"))
        .send()
        .unwrap();
    let mut first = [0u8; 64];
    let n = events.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("event: state"));

    let status = server
        .terminate(Duration::from_secs(3))
        .expect("vessel exits within 3 s of SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    assert!(server.log_text().contains("shutting down"));
}

#[test]
fn media_port_zero_announces_the_port_it_bound() {
    let server = Server::start_with_media("127.0.0.1:0");
    let mut viewer = Client::connect(&server, "/whep/zero");
    let mut caster = Client::connect(&server, "/whip/zero");
    assert!(
        !viewer.answer.contains(" 127.0.0.1 0 typ host"),
        "port 0 must not be announced:\n{}",
        viewer.answer
    );
    run_all_until(
        &mut [&mut viewer, &mut caster],
        Duration::from_secs(15),
        "media flows",
        |c| c[0].video().len() >= 10,
    );
}
