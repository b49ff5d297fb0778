use super::*;

#[tokio::test]
async fn control_between_shards_gets_through_a_full_media_queue() {
    let (link, mut inbox) = shard_link(2);
    let live: Arc<str> = Arc::from("show");
    let media = || Remote::Media {
        live: live.clone(),
        forwards: Arc::from(Vec::new()),
    };
    let sent: Vec<bool> = (0..5).map(|_| link.send(media())).collect();
    assert_eq!(
        sent,
        [true, true, false, false, false],
        "media beyond the queue is dropped"
    );
    assert!(link.send(Remote::Interest {
        live: live.clone(),
        shard: 1,
        watching: true
    }));
    // The control message comes first, then what media fitted.
    assert!(matches!(inbox.recv().await, Some(Remote::Interest { .. })));
    assert!(matches!(inbox.recv().await, Some(Remote::Media { .. })));
    assert!(matches!(inbox.try_recv(), Some(Remote::Media { .. })));
    assert!(inbox.try_recv().is_none());
}

#[test]
fn a_caster_that_ends_leaves_the_registry_unless_replaced() {
    let casters = Casters::default();
    let (a, b) = (PeerId::random_on(0), PeerId::random_on(1));
    casters.lock().unwrap().insert("show".into(), a);
    casters.lock().unwrap().insert("other".into(), b);
    forget_caster(&casters, "other", a);
    assert_eq!(
        casters.lock().unwrap().get("other"),
        Some(&b),
        "another's entry stays"
    );
    forget_caster(&casters, "show", a);
    assert!(!casters.lock().unwrap().contains_key("show"));
}

#[test]
fn announced_public_addresses_route_to_the_local_socket() {
    let public: SocketAddr = "203.0.113.7:0".parse().unwrap();
    let (sockets, announced) = bind_udp_and_tcp("127.0.0.1:0".parse().unwrap(), &[public]).unwrap();
    let port = sockets[0].socket.local_addr().unwrap().port();
    assert_eq!(announced, vec![SocketAddr::new(public.ip(), port)]);
    let routes = local_routes(&sockets, &announced).unwrap();
    assert_eq!(
        routes,
        vec![(announced[0], SocketAddr::new([127, 0, 0, 1].into(), port))]
    );
}
