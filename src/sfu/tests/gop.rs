//! Casters that cannot make a keyframe when asked (RTMP): new viewers
//! start from the kept group of pictures, not from the next keyframe.

use super::*;

/// A caster with a keyframe every 60 frames (2 s) that ignores requests,
/// on `caster_shard`; a viewer joins 1 s into its group on `viewer_shard`.
/// Returns the net, the viewer's index and when it joined.
fn deaf_caster(replay: bool, caster_shard: usize, viewer_shard: usize) -> (Net, usize, Instant) {
    let mut net = Net::sharded(caster_shard.max(viewer_shard) + 1);
    net.replay_gop = replay;
    let c = net.join_on(caster_shard, "show", Role::Cast, false, false);
    net.clients[c].gop_every = Some(60);
    net.replay_gop = false;
    net.run(Duration::from_millis(1000));
    let joined = net.now;
    let v = net.join_on(viewer_shard, "show", Role::Play, false, false);
    (net, v, joined)
}

fn distinct_ts(got: &[Got]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for g in got {
        if out.last() != Some(&g.ts) {
            out.push(g.ts);
        }
    }
    out
}

fn starts_from_the_kept_group(caster_shard: usize, viewer_shard: usize) {
    let (mut net, v, joined) = deaf_caster(true, caster_shard, viewer_shard);
    net.run(Duration::from_millis(400));
    let got = net.clients[v].received.clone();
    assert!(!got.is_empty(), "the viewer got video within 400 ms");
    assert!(got[0].starts_keyframe, "it starts at the group's keyframe");
    let first = got[0].at - joined;
    assert!(
        first < Duration::from_millis(150),
        "first packet after {first:?}"
    );
    // The group was made ~1 s before: ~30 frames, squeezed one tick apart,
    // then the live frames at their own pace (3000 ticks).
    let ts = distinct_ts(&got);
    let squeezed = ts
        .windows(2)
        .take_while(|w| w[1].wrapping_sub(w[0]) == 1)
        .count();
    assert!(
        squeezed >= 25,
        "{squeezed} squeezed frames: {:?}",
        &ts[..ts.len().min(40)]
    );
    assert!(
        ts[squeezed + 1..]
            .windows(2)
            .all(|w| w[1].wrapping_sub(w[0]) == 3000),
        "live frames at their pace after the group: {ts:?}"
    );
    assert_one_stream(&got);
    // Nothing was asked of the caster: it could not answer.
    let stats: Vec<SfuStats> = net.sfus.iter().map(|s| s.stats()).collect();
    assert_eq!(
        stats.iter().map(|s| s.keyframe_requests_sent).sum::<u64>(),
        0,
        "{stats:?}"
    );
    assert_eq!(
        stats.iter().map(|s| s.gop_replays).sum::<u64>(),
        1,
        "{stats:?}"
    );
    // A second viewer later also starts at once, from the same group.
    let joined = net.now;
    let w = net.join_on(viewer_shard, "show", Role::Play, false, false);
    net.run(Duration::from_millis(300));
    let got = &net.clients[w].received;
    assert!(
        got.first()
            .is_some_and(|g| g.starts_keyframe && g.at - joined < Duration::from_millis(150))
    );
    // The first viewer kept its stream through it all.
    net.run(Duration::from_millis(1500));
    assert_one_stream(&net.clients[v].received);
}

#[test]
fn a_viewer_of_a_caster_deaf_to_keyframe_requests_starts_from_its_kept_group() {
    starts_from_the_kept_group(0, 0);
}

#[test]
fn a_viewer_on_another_shard_gets_the_kept_group_handed_over() {
    starts_from_the_kept_group(0, 1);
}

#[test]
fn without_a_kept_group_the_viewer_waits_for_the_next_keyframe() {
    // The control: the same caster without the cache.
    let (mut net, v, joined) = deaf_caster(false, 0, 0);
    net.run(Duration::from_millis(1500));
    let got = &net.clients[v].received;
    let first = got.first().expect("the next keyframe came").at - joined;
    assert!(
        first > Duration::from_millis(800),
        "first packet after {first:?}"
    );
}
