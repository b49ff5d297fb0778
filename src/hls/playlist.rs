//! Playlists, as pure functions of segmenter state: the media playlist
//! (RFC 8216bis with the low-latency tags), the multivariant playlist, the
//! blocking-reload decision, and the one place resource names are made and
//! parsed.
//!
//! Every URI is relative and the same for every viewer (no session ids), so
//! caches can share responses; a caller-given query suffix (e.g.
//! `?token=...` for a private live) is appended to each.
//!
//! Clients that know nothing of LL-HLS still play: segments are listed with
//! `#EXTINF` as in any live playlist, and the low-latency tags are ones they
//! ignore.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::segmenter::Segmenter;

/// A resource of one rendition, by file name. The only place names are made
/// ([`Resource::file_name`]) and read back ([`Resource::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `init-{version}.mp4`
    Init { version: u32 },
    /// `seg-{msn}.m4s`
    Segment { msn: u64 },
    /// `part-{msn}-{part}.m4s`
    Part { msn: u64, part: u32 },
}

impl Resource {
    /// The file name, relative to the rendition's media playlist.
    pub fn file_name(&self) -> String {
        match self {
            Self::Init { version } => format!("init-{version}.mp4"),
            Self::Segment { msn } => format!("seg-{msn}.m4s"),
            Self::Part { msn, part } => format!("part-{msn}-{part}.m4s"),
        }
    }

    /// The resource a file name names (no query string); `None` for
    /// anything else.
    pub fn parse(name: &str) -> Option<Self> {
        // Digits only: `u64::from_str` would also take a leading '+'.
        fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        }
        if let Some(v) = name
            .strip_prefix("init-")
            .and_then(|s| s.strip_suffix(".mp4"))
        {
            return Some(Self::Init { version: num(v)? });
        }
        if let Some(m) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".m4s"))
        {
            return Some(Self::Segment { msn: num(m)? });
        }
        let rest = name.strip_prefix("part-")?.strip_suffix(".m4s")?;
        let (msn, part) = rest.split_once('-')?;
        Some(Self::Part {
            msn: num(msn)?,
            part: num(part)?,
        })
    }
}

/// Another rendition's latest part, for `#EXT-X-RENDITION-REPORT` (lets a
/// player switch renditions without a first, non-blocking reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionReport {
    /// That rendition's media playlist, relative to this one (e.g.
    /// `../720p/index.m3u8`).
    pub uri: String,
    pub last_msn: u64,
    pub last_part: u32,
}

impl RenditionReport {
    /// The report for `segmenter`'s rendition at `uri`; `None` until it has
    /// published a part.
    pub fn of(uri: String, segmenter: &Segmenter) -> Option<Self> {
        let (last_msn, last_part) = segmenter.last_position()?;
        Some(Self {
            uri,
            last_msn,
            last_part,
        })
    }
}

/// How to render one media playlist response.
#[derive(Debug, Clone, Copy, Default)]
pub struct MediaOptions<'a> {
    /// The client sent `_HLS_skip=YES` (or `v2`): answer with a delta
    /// update when there is something to skip.
    pub skip: bool,
    /// Appended to every URI, e.g. `?token=abc` (empty for none).
    pub query: &'a str,
    /// The other renditions of the live.
    pub rendition_reports: &'a [RenditionReport],
}

/// `PART-HOLD-BACK` in part targets: the spec's minimum is 2, Apple's
/// recommendation (and the brief's) 3; below it players stall at the edge.
const PART_HOLD_BACK_PARTS: u32 = 3;

/// `PART-HOLD-BACK` for parts of `part_target`: how far from the playlist's
/// end players start.
pub fn part_hold_back(part_target: Duration) -> Duration {
    part_target * PART_HOLD_BACK_PARTS
}
/// `CAN-SKIP-UNTIL` in target durations: the spec's minimum.
const SKIP_UNTIL_TARGETS: u64 = 6;
/// Parts are listed for segments ending within this many target durations
/// of the playlist's end (RFC 8216bis 6.2.2: SHOULD drop them after three).
const PARTS_KEPT_TARGETS: u64 = 3;

/// Renders the media playlist of `seg`'s rendition.
pub fn media_playlist(seg: &Segmenter, opts: &MediaOptions) -> String {
    let q = opts.query;
    let target = seg.target_duration();
    let part_target = seg.config().part_target;
    let segments: Vec<_> = seg.segments().collect();

    // Segment start times from the first listed one, and the end of all.
    let mut starts = Vec::with_capacity(segments.len());
    let mut end = Duration::ZERO;
    for s in &segments {
        starts.push(end);
        end += s.duration;
    }
    let skip_until = Duration::from_secs(SKIP_UNTIL_TARGETS * target);
    // Delta update: leave out the complete segments that end more than
    // CAN-SKIP-UNTIL before the end.
    let skipped = if opts.skip {
        segments
            .iter()
            .zip(&starts)
            .take_while(|(s, start)| s.complete && **start + s.duration + skip_until <= end)
            .count()
    } else {
        0
    };
    let parts_from = end.saturating_sub(Duration::from_secs(PARTS_KEPT_TARGETS * target));

    let mut out = String::with_capacity(256 + segments.len() * 160);
    out.push_str("#EXTM3U\n");
    // 6 for EXT-X-MAP in a media playlist; 9 for EXT-X-SKIP. Nothing else we
    // write needs more (RFC 8216bis section 8): no higher than needed.
    let version = if skipped > 0 { 9 } else { 6 };
    let _ = writeln!(out, "#EXT-X-VERSION:{version}");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(
        out,
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={},CAN-SKIP-UNTIL={}",
        secs(part_hold_back(part_target)),
        secs(skip_until),
    );
    let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={}", secs(part_target));
    // Every segment starts with a keyframe.
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", seg.media_sequence());
    let dsn = seg.discontinuity_sequence();
    if dsn > 0 {
        let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{dsn}");
    }
    if skipped > 0 {
        let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }

    let mut map = None;
    for (s, start) in segments.iter().zip(&starts).skip(skipped) {
        if s.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        // EXT-X-MAP applies to every segment after it until the next: written
        // for the first listed segment (after a skip too, so the delta
        // stands on its own) and wherever the init segment changes.
        if map != Some(s.init_version) {
            let uri = Resource::Init {
                version: s.init_version,
            }
            .file_name();
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{uri}{q}\"");
            map = Some(s.init_version);
        }
        let _ = writeln!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            rfc3339_millis(s.program_date_time)
        );
        if !s.complete || *start + s.duration > parts_from {
            for (i, p) in s.parts.iter().enumerate() {
                let uri = Resource::Part {
                    msn: s.msn,
                    part: i as u32,
                }
                .file_name();
                let independent = if p.independent {
                    ",INDEPENDENT=YES"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "#EXT-X-PART:DURATION={},URI=\"{uri}{q}\"{independent}",
                    secs(p.duration)
                );
            }
        }
        if s.complete {
            let uri = Resource::Segment { msn: s.msn }.file_name();
            let _ = writeln!(out, "#EXTINF:{},\n{uri}{q}", secs(s.duration));
        }
    }

    let (msn, part) = seg.next_part();
    let uri = Resource::Part { msn, part }.file_name();
    let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{uri}{q}\"");
    for r in opts.rendition_reports {
        let _ = writeln!(
            out,
            "#EXT-X-RENDITION-REPORT:URI=\"{}{q}\",LAST-MSN={},LAST-PART={}",
            r.uri, r.last_msn, r.last_part
        );
    }
    out
}

/// The delivery directives of a media playlist request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    /// `_HLS_msn`
    pub msn: Option<u64>,
    /// `_HLS_part`
    pub part: Option<u32>,
    /// `_HLS_skip=YES` or `v2` (no bearing on the decision; see
    /// [`MediaOptions::skip`]).
    pub skip: bool,
}

/// What to do with a media playlist request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Answer with the playlist.
    Render,
    /// Hold the request and ask again when the segmenter reports something
    /// [`Ready`](super::segmenter::Ready). The IO layer bounds the hold: RFC
    /// 8216bis 6.2.5.2 says to answer 503 after three target durations.
    Wait,
    /// Answer 400 with this reason.
    BadRequest(&'static str),
}

/// Blocking playlist reload (RFC 8216bis 6.2.5.2): whether the playlist
/// asked for can be rendered yet. A request without directives waits too
/// while nothing is published: a playlist with no media in it only makes a
/// player give up or poll.
pub fn decide(req: &Request, seg: &Segmenter) -> Decision {
    let Some(msn) = req.msn else {
        return match (req.part, seg.last_position()) {
            (Some(_), _) => Decision::BadRequest("_HLS_part without _HLS_msn"),
            (None, None) => Decision::Wait,
            (None, Some(_)) => Decision::Render,
        };
    };
    // The last segment listed (the one in progress if it has a part).
    let (last_msn, last_part) = seg
        .last_position()
        .map_or((seg.next_part().0, None), |(m, p)| (m, Some(p)));
    if msn > last_msn + 2 {
        return Decision::BadRequest("_HLS_msn more than two segments past the last");
    }
    if let Some(part) = req.part {
        // How many parts past the last published one this asks for (a later
        // segment's parts counted from its start: a lower bound).
        let ahead = match (msn == last_msn, last_part) {
            (true, Some(last)) => u64::from(part).saturating_sub(u64::from(last)),
            _ => u64::from(part) + 1,
        };
        if ahead > advance_part_limit(seg.config().part_target) {
            return Decision::BadRequest("_HLS_part past the Advance Part Limit");
        }
        return if has_part(seg, msn, part) {
            Decision::Render
        } else {
            Decision::Wait
        };
    }
    // No part: wait for the whole segment (or a later one).
    let complete = seg.segments().filter(|s| s.complete).last().map(|s| s.msn);
    if msn < seg.media_sequence() || complete.is_some_and(|c| c >= msn) {
        Decision::Render
    } else {
        Decision::Wait
    }
}

/// RFC 8216bis 6.2.5.2: 3 / PART-TARGET (in seconds) if the part target is
/// under a second, else 3; rounded up.
fn advance_part_limit(part_target: Duration) -> u64 {
    let ms = part_target.as_millis().max(1) as u64;
    if ms < 1000 { 3000u64.div_ceil(ms) } else { 3 }
}

/// Whether the playlist lists part `part` of segment `msn`, or something
/// later. A part index past a complete segment's last part means part 0 of
/// the next segment (RFC 8216bis 6.2.5.2).
fn has_part(seg: &Segmenter, msn: u64, part: u32) -> bool {
    if msn < seg.media_sequence() {
        return true;
    }
    let Some(s) = seg.segments().find(|s| s.msn == msn) else {
        return false;
    };
    if (part as usize) < s.parts.len() {
        return true;
    }
    s.complete && seg.segments().any(|n| n.msn == msn + 1)
}

/// One rendition in the multivariant playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Its media playlist, relative to the multivariant playlist (e.g.
    /// `720p/index.m3u8`).
    pub uri: String,
    /// Peak bits per second (`BANDWIDTH`).
    pub bandwidth: u64,
    /// Width and height, for video renditions.
    pub resolution: Option<(u16, u16)>,
    /// RFC 6381 codec names of every track
    /// ([`codec_string`](super::fmp4::codec_string)).
    pub codecs: Vec<String>,
    pub frame_rate: Option<f64>,
}

/// Renders the multivariant playlist: one `#EXT-X-STREAM-INF` per rendition,
/// in the order given (players start with the first).
pub fn multivariant_playlist(variants: &[Variant], query: &str) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        let _ = write!(out, "#EXT-X-STREAM-INF:BANDWIDTH={}", v.bandwidth);
        if let Some((w, h)) = v.resolution {
            let _ = write!(out, ",RESOLUTION={w}x{h}");
        }
        if !v.codecs.is_empty() {
            let _ = write!(out, ",CODECS=\"{}\"", v.codecs.join(","));
        }
        if let Some(fps) = v.frame_rate {
            let _ = write!(out, ",FRAME-RATE={fps:.3}");
        }
        let _ = writeln!(out, "\n{}{query}", v.uri);
    }
    out
}

/// Seconds with five decimals (10 µs: finer than any frame, and what
/// players parse as a float).
fn secs(d: Duration) -> String {
    format!("{:.5}", d.as_secs_f64())
}

/// `2026-01-02T03:04:05.678Z`. Times before 1970 (never from a real clock)
/// print as the epoch.
fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::fmp4::{TrackConfig, codec_string};
    use crate::hls::segmenter::{Ready, SegmenterConfig};
    use crate::hls::testutil::{PPS, SPS_320X240, SPS_1280X720, Sim};
    use m3u8_rs::{MediaPlaylist, Playlist};

    fn parse(text: &str) -> MediaPlaylist {
        match m3u8_rs::parse_playlist_res(text.as_bytes()) {
            Ok(Playlist::MediaPlaylist(p)) => p,
            other => panic!("not a media playlist: {other:?}\n{text}"),
        }
    }

    /// The value of `ATTR=` on a tag line.
    fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
        let (_, rest) = line.split_once(':')?;
        // Split on commas outside quotes.
        let mut in_quotes = false;
        let mut start = 0;
        let mut fields = Vec::new();
        for (i, c) in rest.char_indices() {
            match c {
                '"' => in_quotes = !in_quotes,
                ',' if !in_quotes => {
                    fields.push(&rest[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        fields.push(&rest[start..]);
        fields
            .into_iter()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim_matches('"'))
    }

    fn lines_with<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(tag)).collect()
    }

    fn num(s: Option<&str>) -> f64 {
        s.unwrap().parse().unwrap()
    }

    /// The rules every playlist we render must keep, checked line by line.
    fn check_rules(text: &str, seg: &Segmenter) {
        let parsed = parse(text);
        let target = parsed.target_duration as f64;
        for s in &parsed.segments {
            assert!(f64::from(s.duration) <= target, "{} > {target}", s.duration);
        }
        let part_target = num(attr(lines_with(text, "#EXT-X-PART-INF")[0], "PART-TARGET"));
        let control = lines_with(text, "#EXT-X-SERVER-CONTROL")[0];
        assert_eq!(attr(control, "CAN-BLOCK-RELOAD"), Some("YES"));
        assert!(num(attr(control, "PART-HOLD-BACK")) >= 3.0 * part_target - 1e-9);
        assert!(num(attr(control, "CAN-SKIP-UNTIL")) >= 6.0 * target);
        for part in lines_with(text, "#EXT-X-PART:") {
            // Whole frames at 90 kHz: never past the target at all.
            assert!(num(attr(part, "DURATION")) <= part_target, "{part}");
            assert!(Resource::parse(attr(part, "URI").unwrap()).is_some());
        }
        let hints = lines_with(text, "#EXT-X-PRELOAD-HINT");
        assert_eq!(hints.len(), 1);
        assert_eq!(attr(hints[0], "TYPE"), Some("PART"));
        let (msn, part) = seg.next_part();
        assert_eq!(
            Resource::parse(attr(hints[0], "URI").unwrap()),
            Some(Resource::Part { msn, part })
        );
        assert_eq!(parsed.media_sequence, seg.media_sequence());
    }

    #[test]
    fn renders_a_valid_ll_hls_playlist() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 30);
        sim.run_until(5.7);
        let text = media_playlist(&sim.seg, &MediaOptions::default());
        println!("{text}");
        check_rules(&text, &sim.seg);
        let parsed = parse(&text);
        assert_eq!(parsed.version, Some(6));
        assert_eq!(parsed.target_duration, 1);
        assert_eq!(parsed.segments.len(), 5);
        assert_eq!(parsed.segments[0].uri, "seg-0.m4s");
        assert_eq!(parsed.segments[0].duration, 1.0);
        let map = parsed.segments[0].map.as_ref().unwrap();
        assert_eq!(map.uri, "init-0.mp4");
        let pdt = parsed.segments[0].program_date_time.unwrap();
        assert_eq!(pdt.timestamp(), 1_767_225_600);

        // Parts for the last three target durations (segments 2..4) and the
        // one in progress (5: 5.0..5.5 s).
        let parts = lines_with(&text, "#EXT-X-PART:");
        assert_eq!(parts.len(), 3 * 2 + 1);
        assert_eq!(attr(parts[0], "URI"), Some("part-2-0.m4s"));
        assert!(parts[0].ends_with(",INDEPENDENT=YES"));
        assert!(!parts[1].contains("INDEPENDENT"));
        assert_eq!(attr(parts[6], "URI"), Some("part-5-0.m4s"));
        assert!(text.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-5-1.m4s\""));
        // The in-progress segment's tags come before its parts.
        let pdt_at = text
            .rfind("#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:05.000Z")
            .unwrap();
        assert!(pdt_at < text.find("part-5-0.m4s").unwrap());
        assert!(!text.contains("#EXT-X-DISCONTINUITY"));
    }

    #[test]
    fn the_media_sequence_follows_the_window() {
        let config = SegmenterConfig {
            window: 3,
            ..SegmenterConfig::default()
        };
        let mut sim = Sim::new(config, 30, 30);
        let mut last = 0;
        for t in [4.2, 5.2, 6.2, 9.2] {
            sim.run_until(t);
            let text = media_playlist(&sim.seg, &MediaOptions::default());
            check_rules(&text, &sim.seg);
            let parsed = parse(&text);
            assert_eq!(parsed.segments.len(), 3);
            assert!(parsed.media_sequence > last || last == 0);
            last = parsed.media_sequence;
            let first = parsed.segments[0].uri.as_str();
            assert_eq!(
                Resource::parse(first),
                Some(Resource::Segment { msn: last })
            );
        }
        assert_eq!(last, 6);
    }

    #[test]
    fn delta_updates_skip_old_segments() {
        let config = SegmenterConfig {
            window: 12,
            ..SegmenterConfig::default()
        };
        let mut sim = Sim::new(config, 30, 30);
        sim.run_until(12.7);
        let full = media_playlist(&sim.seg, &MediaOptions::default());
        let opts = MediaOptions {
            skip: true,
            ..MediaOptions::default()
        };
        let delta = media_playlist(&sim.seg, &opts);
        println!("{delta}");
        check_rules(&delta, &sim.seg);
        // 12 complete segments 0..11 (1 s each, all in the window) and
        // 12.0..12.5 in progress:
        // the end is at 12.5 s; CAN-SKIP-UNTIL is 6 s; segments ending by
        // 6.5 s (0..5) are skipped.
        assert_eq!(
            lines_with(&delta, "#EXT-X-SKIP"),
            ["#EXT-X-SKIP:SKIPPED-SEGMENTS=6"]
        );
        assert!(delta.contains("#EXT-X-VERSION:9"));
        let parsed = parse(&delta);
        assert_eq!(parsed.media_sequence, 0);
        assert_eq!(parse(&full).media_sequence, 0);
        // 0 + 6 skipped: the first listed is 6.
        assert_eq!(parsed.segments[0].uri, "seg-6.m4s");
        assert_eq!(parsed.segments.len(), parse(&full).segments.len() - 6);
        // The delta names its init segment itself.
        assert_eq!(parsed.segments[0].map.as_ref().unwrap().uri, "init-0.mp4");
        // Without a skip request, or with nothing old enough, no skip.
        assert!(!full.contains("EXT-X-SKIP"));
        let mut young = Sim::new(SegmenterConfig::default(), 30, 30);
        young.run_until(3.2);
        assert!(!media_playlist(&young.seg, &opts).contains("EXT-X-SKIP"));
    }

    #[test]
    fn discontinuities_are_marked_with_a_new_map() {
        let config = SegmenterConfig {
            window: 4,
            ..SegmenterConfig::default()
        };
        let mut sim = Sim::new(config, 30, 30);
        sim.run_until(3.2);
        let tracks = vec![
            TrackConfig::video(SPS_1280X720.to_vec(), PPS.to_vec()).unwrap(),
            TrackConfig::Opus {
                channels: 2,
                pre_skip: 312,
            },
        ];
        sim.seg.discontinuity(tracks);
        sim.frames = 0;
        sim.audio_frames = 0;
        sim.video_origin = 5_000;
        sim.audio_origin = 5_000 * 48 / 90;
        sim.wall_offset = Duration::from_secs(4);
        sim.run_until(2.2);
        let text = media_playlist(&sim.seg, &MediaOptions::default());
        println!("{text}");
        check_rules(&text, &sim.seg);
        let parsed = parse(&text);
        let disc: Vec<_> = parsed.segments.iter().map(|s| s.discontinuity).collect();
        // Segments 0..2, 3 (the 3.0..3.2 s stub), then the new source's 4
        // and 5 (6 has no part yet). Window 4 (3.2 s, over the 3 s floor):
        // 2..5.
        assert_eq!(parsed.media_sequence, 2);
        assert_eq!(disc, [false, false, true, false]);
        assert_eq!(parsed.segments[2].map.as_ref().unwrap().uri, "init-1.mp4");
        assert_eq!(lines_with(&text, "#EXT-X-MAP").len(), 2);
        assert!(!text.contains("#EXT-X-DISCONTINUITY-SEQUENCE"));
        // After the old ones slide out, the sequence counts the removed tag.
        sim.run_until(6.2);
        let text = media_playlist(&sim.seg, &MediaOptions::default());
        check_rules(&text, &sim.seg);
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"));
        assert!(!text.contains("#EXT-X-DISCONTINUITY\n"));
        assert_eq!(parse(&text).discontinuity_sequence, 1);
        assert!(text.contains("init-1.mp4") && !text.contains("init-0.mp4"));
    }

    #[test]
    fn every_uri_carries_the_query() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 30);
        sim.run_until(3.7);
        let reports = [RenditionReport {
            uri: "../low/index.m3u8".into(),
            last_msn: 3,
            last_part: 1,
        }];
        let opts = MediaOptions {
            skip: false,
            query: "?token=s3cr3t",
            rendition_reports: &reports,
        };
        let text = media_playlist(&sim.seg, &opts);
        let mut uris = 0;
        for line in text.lines() {
            if let Some(uri) = attr(line, "URI") {
                assert!(uri.ends_with("?token=s3cr3t"), "{line}");
                uris += 1;
            } else if !line.starts_with('#') {
                assert!(line.ends_with(".m4s?token=s3cr3t"), "{line}");
                uris += 1;
            }
        }
        assert!(uris > 10);
        assert!(text.contains(
            "#EXT-X-RENDITION-REPORT:URI=\"../low/index.m3u8?token=s3cr3t\",LAST-MSN=3,LAST-PART=1\n"
        ));
        let r = RenditionReport::of("x.m3u8".into(), &sim.seg).unwrap();
        assert_eq!((r.last_msn, r.last_part), (3, 0));
    }

    #[test]
    fn blocking_reload_decisions() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 30);
        let req = |msn, part| Request {
            msn,
            part,
            skip: false,
        };
        // Nothing published yet: even a plain request waits.
        assert_eq!(decide(&req(None, None), &sim.seg), Decision::Wait);
        assert_eq!(decide(&req(Some(0), Some(0)), &sim.seg), Decision::Wait);
        assert_eq!(decide(&req(Some(2), None), &sim.seg), Decision::Wait);
        assert!(matches!(
            decide(&req(Some(3), None), &sim.seg),
            Decision::BadRequest(_)
        ));

        sim.run_until(3.7); // 0..2 complete, 3 has part 0
        assert!(matches!(
            decide(&req(None, Some(1)), &sim.seg),
            Decision::BadRequest(_)
        ));
        assert_eq!(decide(&req(Some(3), Some(0)), &sim.seg), Decision::Render);
        assert_eq!(decide(&req(Some(3), Some(1)), &sim.seg), Decision::Wait);
        // Segment 3 is not complete yet; 2 is.
        assert_eq!(decide(&req(Some(3), None), &sim.seg), Decision::Wait);
        assert_eq!(decide(&req(Some(2), None), &sim.seg), Decision::Render);
        assert_eq!(decide(&req(Some(0), Some(5)), &sim.seg), Decision::Render);
        // Part 2 of complete segment 2 (it has 2) is part 0 of 3: there.
        assert_eq!(decide(&req(Some(2), Some(2)), &sim.seg), Decision::Render);
        assert_eq!(decide(&req(Some(5), None), &sim.seg), Decision::Wait);
        assert!(matches!(
            decide(&req(Some(6), None), &sim.seg),
            Decision::BadRequest(_)
        ));
        // Advance Part Limit at 0.5 s parts: 6 parts.
        assert_eq!(decide(&req(Some(3), Some(6)), &sim.seg), Decision::Wait);
        assert!(matches!(
            decide(&req(Some(3), Some(7)), &sim.seg),
            Decision::BadRequest(_)
        ));
        assert_eq!(decide(&req(Some(4), Some(5)), &sim.seg), Decision::Wait);
        assert!(matches!(
            decide(&req(Some(4), Some(6)), &sim.seg),
            Decision::BadRequest(_)
        ));

        // What was waited for arrives: Ready names it, decide says Render.
        sim.ready.clear();
        sim.run_until(4.1);
        assert!(sim.ready.contains(&Ready::Part { msn: 3, part: 1 }));
        assert!(sim.ready.contains(&Ready::Segment { msn: 3 }));
        assert_eq!(decide(&req(Some(3), Some(1)), &sim.seg), Decision::Render);
        assert_eq!(decide(&req(Some(3), None), &sim.seg), Decision::Render);
    }

    #[test]
    fn advance_part_limits() {
        assert_eq!(advance_part_limit(Duration::from_millis(500)), 6);
        assert_eq!(advance_part_limit(Duration::from_millis(333)), 10);
        assert_eq!(advance_part_limit(Duration::from_secs(1)), 3);
        assert_eq!(advance_part_limit(Duration::from_secs(2)), 3);
    }

    #[test]
    fn resource_names_round_trip() {
        for r in [
            Resource::Init { version: 3 },
            Resource::Segment { msn: 12345 },
            Resource::Part { msn: 7, part: 0 },
        ] {
            assert_eq!(Resource::parse(&r.file_name()), Some(r));
        }
        for bad in [
            "",
            "index.m3u8",
            "seg-.m4s",
            "seg-+1.m4s",
            "seg-1.mp4",
            "part-1.m4s",
            "part-1-x.m4s",
            "part--1-2.m4s",
            "init-1.m4s",
            "init-99999999999.mp4",
            "seg-1.m4s?x=1",
        ] {
            assert_eq!(Resource::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn multivariant_playlist_lists_each_rendition() {
        let hi = TrackConfig::video(SPS_1280X720.to_vec(), PPS.to_vec()).unwrap();
        let lo = TrackConfig::video(SPS_320X240.to_vec(), PPS.to_vec()).unwrap();
        let opus = TrackConfig::Opus {
            channels: 2,
            pre_skip: 312,
        };
        let variants = [
            Variant {
                uri: "high/index.m3u8".into(),
                bandwidth: 2_500_000,
                resolution: Some((1280, 720)),
                codecs: vec![codec_string(&hi), codec_string(&opus)],
                frame_rate: Some(30.0),
            },
            Variant {
                uri: "low/index.m3u8".into(),
                bandwidth: 400_000,
                resolution: Some((320, 240)),
                codecs: vec![codec_string(&lo), codec_string(&opus)],
                frame_rate: None,
            },
        ];
        let text = multivariant_playlist(&variants, "?token=t");
        println!("{text}");
        let Ok(Playlist::MasterPlaylist(m)) = m3u8_rs::parse_playlist_res(text.as_bytes()) else {
            panic!("not a multivariant playlist:\n{text}")
        };
        assert_eq!(m.variants.len(), 2);
        assert_eq!(m.variants[0].uri, "high/index.m3u8?token=t");
        assert_eq!(m.variants[0].bandwidth, 2_500_000);
        assert_eq!(m.variants[0].codecs.as_deref(), Some("avc1.42c01f,opus"));
        let res = m.variants[1].resolution.unwrap();
        assert_eq!((res.width, res.height), (320, 240));
        assert_eq!(m.variants[1].codecs.as_deref(), Some("avc1.64000d,opus"));
        assert!(m.independent_segments);
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(rfc3339_millis(t), "2024-02-29T23:59:59.123Z");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_800);
        assert_eq!(rfc3339_millis(t), "2100-01-01T00:00:00.000Z");
    }
}

/// The whole chain on real media, read back by an independent player:
/// x264 video and Opus through the segmenter, the playlist and files written
/// out, and ffmpeg's HLS demuxer (which ignores the LL tags, as any plain HLS
/// client does) reading them.
#[cfg(test)]
mod ffprobe_tests {
    use super::*;
    use crate::hls::fmp4::TrackConfig;
    use crate::hls::segmenter::{Lookup, Sample, SegmenterConfig};
    use crate::hls::testutil::{self, TempDir};
    use std::process::Command;

    /// Pushes `aus` (30 fps) and `opus` (20 ms) into `seg` in time order,
    /// on RTP-like clocks that start at `origin_s` seconds, wall clock from
    /// `t0`.
    fn feed(
        seg: &mut Segmenter,
        aus: &[testutil::TestAu],
        opus: &[bytes::Bytes],
        origin_s: f64,
        t0: SystemTime,
    ) {
        let (mut v, mut a) = (0usize, 0usize);
        let v0 = (origin_s * 90_000.0) as u64;
        let a0 = (origin_s * 48_000.0) as u64;
        while v < aus.len() || a < opus.len() {
            let tv = v as f64 / 30.0;
            let ta = a as f64 * 0.02;
            let (sample, t) = if v < aus.len() && (a >= opus.len() || tv <= ta) {
                v += 1;
                let s = Sample {
                    track: 0,
                    dts: v0 + (v as u64 - 1) * 3000,
                    composition_offset: 0,
                    keyframe: aus[v - 1].keyframe,
                    data: aus[v - 1].avcc.clone(),
                };
                (s, tv)
            } else {
                a += 1;
                let s = Sample {
                    track: 1,
                    dts: a0 + (a as u64 - 1) * 960,
                    composition_offset: 0,
                    keyframe: true,
                    data: opus[a - 1].clone(),
                };
                (s, ta)
            };
            seg.push(sample, t0 + Duration::from_secs_f64(t));
        }
    }

    fn tracks(au: &testutil::TestAu) -> Vec<TrackConfig> {
        vec![
            TrackConfig::video(au.sps.clone().unwrap(), au.pps.clone().unwrap()).unwrap(),
            TrackConfig::Opus {
                channels: 2,
                pre_skip: 312,
            },
        ]
    }

    /// Writes the playlist (finished with `#EXT-X-ENDLIST`, so a demuxer
    /// reads it through rather than waiting for reloads), its init segments
    /// and complete segments into `dir`; returns the playlist and the listed
    /// duration.
    fn write_out(seg: &Segmenter, dir: &std::path::Path) -> (String, f64) {
        let mut text = media_playlist(seg, &MediaOptions::default());
        text.push_str("#EXT-X-ENDLIST\n");
        std::fs::write(dir.join("index.m3u8"), &text).unwrap();
        let mut listed = 0.0;
        for s in seg.segments().filter(|s| s.complete) {
            let Lookup::Ready(bytes) = seg.segment(s.msn) else {
                panic!("segment {} not ready", s.msn)
            };
            std::fs::write(
                dir.join(Resource::Segment { msn: s.msn }.file_name()),
                bytes,
            )
            .unwrap();
            let init = Resource::Init {
                version: s.init_version,
            };
            std::fs::write(
                dir.join(init.file_name()),
                seg.init(s.init_version).unwrap(),
            )
            .unwrap();
            listed += s.duration.as_secs_f64();
        }
        (text, listed)
    }

    #[test]
    fn ffprobe_reads_the_rendered_playlist() {
        if !testutil::have_ffmpeg("ffprobe_reads_the_rendered_playlist") {
            return;
        }
        let dir = TempDir::new("hls-e2e");
        let aus = testutil::x264_access_units(&dir.0, 4.0, 30, 30);
        let opus = testutil::opus_frames(4.0);
        let mut seg = Segmenter::new(SegmenterConfig::default(), tracks(&aus[0]));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        feed(&mut seg, &aus, &opus, 0.1, t0);
        let (text, listed) = write_out(&seg, &dir.0);
        assert_eq!(listed, 3.0, "segments 0..2 complete, 3 in progress");

        let streams = testutil::ffprobe(&dir.0.join("index.m3u8"));
        println!("{text}\nffprobe (HLS playlist): {streams:?}");
        let video = streams.iter().find(|s| s.codec == "h264").expect("video");
        assert_eq!((video.width, video.height), (Some(320), Some(240)));
        assert_eq!(video.packets, 90);
        assert!(
            (video.packet_span - listed).abs() <= listed * 0.02,
            "{}",
            video.packet_span
        );
        let audio = streams.iter().find(|s| s.codec == "opus").expect("audio");
        assert_eq!((audio.sample_rate, audio.channels), (Some(48000), Some(2)));
        assert!(
            (audio.packet_span - listed).abs() <= listed * 0.02,
            "{}",
            audio.packet_span
        );
    }

    #[test]
    fn ffmpeg_decodes_across_a_discontinuity() {
        if !testutil::have_ffmpeg("ffmpeg_decodes_across_a_discontinuity") {
            return;
        }
        let dir = TempDir::new("hls-disc");
        let small = testutil::x264_access_units(&dir.0, 2.0, 30, 30);
        let big = testutil::x264_access_units_sized(&dir.0, (640, 360), 2.0, 30, 30);
        let opus = testutil::opus_frames(2.0);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let mut seg = Segmenter::new(SegmenterConfig::default(), tracks(&small[0]));
        feed(&mut seg, &small, &opus, 0.1, t0);
        // A new caster: new size, new clocks.
        seg.discontinuity(tracks(&big[0]));
        feed(&mut seg, &big, &opus, 5000.0, t0 + Duration::from_secs(3));
        let (text, listed) = write_out(&seg, &dir.0);
        println!("{text}");
        assert!(text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-1.mp4\""));
        // 0 and 1 (2 s, the last flushed by the discontinuity), then 2 (1 s).
        assert_eq!(listed, 3.0);

        // What a player does at the discontinuity: the old init with the
        // old segments, then the new init with the new ones. Every frame
        // decodes, without a decoder complaint. (ffmpeg's own HLS demuxer
        // can't be the judge here: it skips EXT-X-DISCONTINUITY and a
        // second moov, so it feeds the new pictures to the old decoder.)
        let decode = |files: &[&str], name: &str| -> Vec<String> {
            let mut bytes = Vec::new();
            for f in files {
                bytes.extend(std::fs::read(dir.0.join(f)).unwrap());
            }
            let path = dir.0.join(name);
            std::fs::write(&path, bytes).unwrap();
            let out = Command::new("ffprobe")
                .args(["-v", "error", "-select_streams", "v", "-show_entries"])
                .args(["frame=pts_time,width,height", "-of", "csv=p=0"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.is_empty(), "{name}: {stderr}");
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        };
        let before = decode(&["init-0.mp4", "seg-0.m4s", "seg-1.m4s"], "before.mp4");
        let after = decode(&["init-1.mp4", "seg-2.m4s"], "after.mp4");
        assert_eq!(before.len(), 60);
        assert_eq!(after.len(), 30);
        assert!(before.iter().all(|f| f.ends_with(",320,240")), "{before:?}");
        assert!(after.iter().all(|f| f.ends_with(",640,360")), "{after:?}");
        // The new source continues the timeline: its first picture is at
        // 2.0 s, where the old one ended (its own clock said 5000 s).
        assert_eq!(after[0], "2.000000,640,360");
    }
}
