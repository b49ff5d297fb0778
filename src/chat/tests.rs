use std::time::{Duration, Instant};

use super::*;

fn setup() -> (ChatConfig, Room, Instant) {
    (ChatConfig::default(), Room::default(), Instant::now())
}

fn text(event: ChatEvent) -> Message {
    match event {
        ChatEvent::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn messages_get_increasing_ids_in_the_order_taken() {
    let (config, mut room, now) = setup();
    let mut a = Speaker::new("alice", false, &config, now);
    let mut b = Speaker::new("bob", false, &config, now);
    let first = text(room.say(&config, &mut a, "hi", now, 1).unwrap());
    let second = text(room.say(&config, &mut b, " hello ", now, 2).unwrap());
    assert_eq!((first.id, second.id), (1, 2));
    assert_eq!(second.text, "hello");
    assert_eq!(&*second.name, "bob");
    let ids: Vec<u64> = room.since(None).iter().map(|m| m.id).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(
        room.since(Some(1)).len(),
        1,
        "a reconnect asks for what it missed"
    );
}

#[test]
fn the_length_limit_counts_characters_and_empty_messages_are_refused() {
    let (config, mut room, now) = setup();
    let mut a = Speaker::new("a", false, &config, now);
    let long = "é".repeat(config.max_len);
    assert!(
        room.say(&config, &mut a, &long, now, 0).is_ok(),
        "500 two-byte characters fit"
    );
    let too_long = "x".repeat(config.max_len + 1);
    assert_eq!(
        room.say(&config, &mut a, &too_long, now, 0),
        Err(ChatError::TooLong { len: 501, max: 500 })
    );
    assert_eq!(
        room.say(&config, &mut a, "  \u{7}  ", now, 0),
        Err(ChatError::Empty)
    );
}

#[test]
fn a_connection_gets_a_burst_then_one_message_per_refill() {
    let (config, mut room, now) = setup();
    let mut a = Speaker::new("a", false, &config, now);
    for i in 0..config.burst {
        assert!(room.say(&config, &mut a, &format!("m{i}"), now, 0).is_ok());
    }
    let Err(ChatError::RateLimited(wait)) = room.say(&config, &mut a, "one more", now, 0) else {
        panic!("the burst is spent");
    };
    assert_eq!(wait, 2000);
    // Others are not affected by one flooder.
    let mut b = Speaker::new("b", false, &config, now);
    assert!(room.say(&config, &mut b, "me too", now, 0).is_ok());
    let later = now + config.refill;
    assert!(room.say(&config, &mut a, "again", later, 0).is_ok());
    assert!(room.say(&config, &mut a, "and again", later, 0).is_err());
    // Refused messages are not kept.
    assert_eq!(room.since(None).len(), config.burst as usize + 2);
}

#[test]
fn only_the_caster_removes_messages() {
    let (config, mut room, now) = setup();
    let mut viewer = Speaker::new("v", false, &config, now);
    let caster = Speaker::new("c", true, &config, now);
    let m = text(room.say(&config, &mut viewer, "spam", now, 0).unwrap());
    assert_eq!(room.remove(&viewer, m.id), Err(ChatError::NotModerator));
    assert_eq!(room.remove(&caster, m.id), Ok(ChatEvent::Removed(m.id)));
    assert!(
        room.since(None).is_empty(),
        "a removed message is not replayed"
    );
    assert_eq!(
        room.removed(),
        [m.id],
        "but its removal is, for those who were away"
    );
    assert_eq!(
        room.remove(&caster, m.id),
        Err(ChatError::NoSuchMessage(m.id))
    );
}

#[test]
fn history_is_bounded() {
    let config = ChatConfig {
        history: 3,
        burst: 100,
        ..ChatConfig::default()
    };
    let mut room = Room::default();
    let now = Instant::now();
    let mut a = Speaker::new("a", false, &config, now);
    for i in 0..5 {
        room.say(
            &config,
            &mut a,
            &format!("{i}"),
            now + Duration::from_secs(i),
            0,
        )
        .unwrap();
    }
    let ids: Vec<u64> = room.since(None).iter().map(|m| m.id).collect();
    assert_eq!(ids, [3, 4, 5]);
}

#[test]
fn names_are_cleaned() {
    assert_eq!(clean_name("  ann\u{0} "), "ann");
    assert_eq!(clean_name(""), "viewer");
    assert_eq!(clean_name(&"n".repeat(100)).len(), MAX_NAME);
}

#[test]
fn rooms_are_capped_and_the_longest_idle_one_makes_way() {
    let config = ChatConfig::default();
    let mut rooms = Rooms::new(2);
    let now = Instant::now();
    let mut s = Speaker::new("s", false, &config, now);
    rooms
        .enter("a")
        .unwrap()
        .room
        .say(&config, &mut s, "kept", now, 0)
        .unwrap();
    rooms
        .enter("b")
        .unwrap()
        .room
        .say(&config, &mut s, "kept", now, 0)
        .unwrap();
    // Both rooms have someone in them: no room for a third.
    assert_eq!(rooms.enter("c").err(), Some(ChatError::TooManyRooms));
    assert!(rooms.enter("a").is_ok(), "an existing room still opens");
    // b empties first, then a: b has been idle longest and makes way.
    assert!(
        !rooms.leave("b", now),
        "a room with history stays while idle"
    );
    rooms.leave("a", now + Duration::from_secs(1));
    rooms.leave("a", now + Duration::from_secs(1));
    let entered = rooms.enter("c").unwrap();
    assert_eq!(entered.evicted.as_deref(), Some("b"));
    assert!(rooms.room("a").is_some() && rooms.room("b").is_none());
    // A room without messages goes with its last connection.
    assert!(rooms.leave("c", now));
    assert!(rooms.room("c").is_none());
}

fn numbered(id: u64, text: &str) -> Message {
    Message {
        id,
        name: "n".into(),
        text: text.into(),
        at: 0,
        caster: false,
    }
}

#[test]
fn heard_messages_keep_their_ids_and_echoes_are_dropped() {
    let (config, mut room, now) = setup();
    assert!(room.hear(&config, numbered(7, "from another node")));
    assert!(!room.hear(&config, numbered(7, "echo")), "heard already");
    assert!(
        !room.hear(&config, numbered(3, "older")),
        "older than the newest"
    );
    assert_eq!(room.newest(), 7);
    // Local numbering (Redis away) goes on after what was heard.
    let mut a = Speaker::new("a", false, &config, now);
    let local = text(room.say(&config, &mut a, "local", now, 0).unwrap());
    assert_eq!(local.id, 8);
    let ids: Vec<u64> = room.since(None).iter().map(|m| m.id).collect();
    assert_eq!(ids, [7, 8]);
}

#[test]
fn heard_history_is_bounded_like_said_history() {
    let config = ChatConfig {
        history: 3,
        ..ChatConfig::default()
    };
    let mut room = Room::default();
    for id in 1..=5 {
        room.hear(&config, numbered(id, "m"));
    }
    let ids: Vec<u64> = room.since(None).iter().map(|m| m.id).collect();
    assert_eq!(ids, [3, 4, 5]);
}

#[test]
fn prepare_checks_and_charges_without_numbering() {
    let (config, room, now) = setup();
    let mut a = Speaker::new("a", false, &config, now);
    assert_eq!(
        Room::prepare(&config, &mut a, "  hi\u{7} ", now).unwrap(),
        "hi"
    );
    assert_eq!(room.newest(), 0, "nothing numbered");
    for _ in 1..config.burst {
        Room::prepare(&config, &mut a, "x", now).unwrap();
    }
    assert!(matches!(
        Room::prepare(&config, &mut a, "x", now),
        Err(ChatError::RateLimited(_))
    ));
    assert_eq!(
        Room::prepare(&config, &mut a, " ", now),
        Err(ChatError::Empty)
    );
}

#[test]
fn a_heard_removal_takes_the_message_once() {
    let (config, mut room, _) = setup();
    room.hear(&config, numbered(1, "keep"));
    room.hear(&config, numbered(2, "spam"));
    assert!(room.forget(2));
    assert!(!room.forget(2), "heard twice");
    assert_eq!(room.since(None).len(), 1);
    assert_eq!(room.removed(), [2]);
    // A removal of a message never held here is still passed on.
    assert!(room.forget(9));
}
