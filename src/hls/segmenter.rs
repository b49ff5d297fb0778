//! One rendition's LL-HLS timeline: samples in; parts, segments and init
//! segments out, each addressed by (media sequence number, part index).
//!
//! - Parts are cut on the video timeline (the audio one for an audio-only
//!   rendition), never longer than `part_target`. Each part is one complete
//!   fMP4 fragment, and a segment's bytes are its parts back to back, so a
//!   segment and its parts are the same bytes served two ways.
//! - A segment starts with a keyframe: it ends at the first video keyframe
//!   once it has lasted `segment_target`. Samples before the first keyframe
//!   are dropped (nobody could decode them).
//! - Audio goes into the part that is open when its sample is complete,
//!   limited to samples that start before the part's end: every track stays
//!   contiguous, and tracks stay roughly aligned part by part.
//! - A sample's duration is the gap to the next sample of its track, so one
//!   sample per track is held back until the next arrives.
//! - Output timestamps start at 0 and never jump: after a
//!   [`Segmenter::discontinuity`] the new source continues where the old one
//!   ended, whatever its own timestamps were.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use super::fmp4::{SampleEntry, TrackConfig, TrackRun, fragment, init_segment};

/// Timing knobs of a rendition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmenterConfig {
    /// Longest part (`PART-TARGET`); parts are as close to it as whole
    /// frames allow.
    pub part_target: Duration,
    /// A segment ends at the first keyframe after it has lasted this long.
    pub segment_target: Duration,
    /// Complete segments kept (and listed) behind the one in progress.
    pub window: usize,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            part_target: Duration::from_millis(500),
            segment_target: Duration::from_secs(1),
            window: 7,
        }
    }
}

/// One media sample, as the IO layer hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Index into the tracks given to [`Segmenter::new`] (or the last
    /// [`Segmenter::discontinuity`]).
    pub track: usize,
    /// Decode time in the track's timescale (90 kHz video, 48 kHz Opus, the
    /// sample rate for AAC), unwrapped. All tracks' times must count from
    /// the same origin (the caller lines up audio and video, e.g. with RTCP
    /// sender reports): the segmenter compares them across tracks.
    pub dts: u64,
    /// PTS - DTS (0 without B-frames, as from WebRTC).
    pub composition_offset: i32,
    /// An IDR picture. Audio samples are always sync samples; ignored there.
    pub keyframe: bool,
    /// The sample: AVCC (4-byte lengths) for video, one packet for audio.
    pub data: Bytes,
}

/// Whether a video keyframe ends the segment in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// The segmenter's own rule: the first keyframe once the segment has
    /// lasted (nearly) `segment_target`.
    Auto,
    /// The caller's: this keyframe ends it (if it holds anything). A live's
    /// renditions are cut on the same keyframes this way, so their segments
    /// line up (see `feed::Boundaries`).
    Here,
    /// The caller's: this keyframe does not end it.
    NotHere,
}

/// Something that became available, for the IO layer to wake requests
/// blocked on it (parts, segments, and playlists waiting for either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Part { msn: u64, part: u32 },
    Segment { msn: u64 },
}

/// The answer to a request for a part or a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Here are its bytes.
    Ready(Bytes),
    /// It is the next thing to be produced (a preload hint, or the segment
    /// in progress): the caller holds the request until a [`Ready`] names it
    /// (then asks again), bounding the wait itself.
    Pending,
    /// It existed but slid out of the window.
    Gone,
    /// It doesn't exist and isn't next (a part index past the end of a
    /// complete segment, or a number far in the future).
    NotFound,
}

/// One part: a `moof` + `mdat` fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub duration: Duration,
    /// Starts with a keyframe (`INDEPENDENT=YES`).
    pub independent: bool,
    pub data: Bytes,
}

/// One segment, complete or in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Media sequence number.
    pub msn: u64,
    pub parts: Vec<Part>,
    /// Sum of its parts' durations (so far, while in progress).
    pub duration: Duration,
    /// Wall-clock time given with its first sample.
    pub program_date_time: SystemTime,
    /// First segment of a new source (`EXT-X-DISCONTINUITY`).
    pub discontinuity: bool,
    /// Discontinuity sequence number: discontinuities up to and including
    /// this segment since the start.
    pub discontinuity_sequence: u64,
    /// The init segment (`EXT-X-MAP`) its fragments need.
    pub init_version: u32,
    pub complete: bool,
    /// The parts' bytes back to back; empty until complete.
    data: Bytes,
}

/// A sample whose duration isn't known yet; dts on the output timeline.
#[derive(Debug)]
struct Held {
    dts: u64,
    composition_offset: i32,
    keyframe: bool,
    data: Bytes,
    wall: SystemTime,
}

/// A sample with its duration, waiting to go into a part.
#[derive(Debug)]
struct Finished {
    dts: u64,
    duration: u32,
    composition_offset: i32,
    keyframe: bool,
    data: Bytes,
}

#[derive(Debug)]
struct TrackState {
    timescale: u32,
    video: bool,
    /// Input dts that maps to `base_out` (set when the source's first
    /// keyframe arrives).
    origin_in: u64,
    base_out: u64,
    held: Option<Held>,
    /// Finished samples of a non-cutting track, not yet in a part.
    queue: VecDeque<Finished>,
    /// Duration of the last finished sample: the guess for a held sample's
    /// when the source ends without a next one.
    last_duration: u32,
}

/// Most samples a non-cutting track queues while the cutting track is
/// silent (a frozen camera with live audio): ~20 s of Opus. Past it the
/// oldest are dropped rather than growing without bound.
const MAX_QUEUED: usize = 1000;

/// The LL-HLS state of one rendition. See the module docs.
#[derive(Debug)]
pub struct Segmenter {
    config: SegmenterConfig,
    tracks: Vec<TrackState>,
    /// The track whose timeline cuts parts and segments.
    cut: usize,
    /// Init segments still referenced by a listed segment, and the current.
    inits: Vec<(u32, Bytes)>,
    init_version: u32,
    /// Complete segments, oldest first.
    segments: VecDeque<Segment>,
    /// The segment in progress.
    open: Option<Segment>,
    next_msn: u64,
    /// `mfhd` sequence number of the next fragment.
    next_fragment: u32,
    /// Waiting for the source's first keyframe.
    started: bool,
    /// The next segment opened gets `EXT-X-DISCONTINUITY`.
    pending_discontinuity: bool,
    discontinuities: u64,
    /// Cutting-track output ticks where the open segment and part began.
    segment_start: u64,
    part_start: u64,
    /// Cutting-track samples of the open part.
    part_samples: Vec<Finished>,
    /// Output time reached so far (ns): where the next source starts.
    timeline_end_ns: u128,
    /// Longest segment ever completed (the target duration never shrinks).
    longest_segment: Duration,
}

impl Segmenter {
    /// A segmenter for these tracks (the init segment is version 0). Panics
    /// if `tracks` is empty.
    pub fn new(config: SegmenterConfig, tracks: Vec<TrackConfig>) -> Self {
        let mut s = Self {
            config,
            tracks: Vec::new(),
            cut: 0,
            inits: Vec::new(),
            init_version: 0,
            segments: VecDeque::new(),
            open: None,
            next_msn: 0,
            next_fragment: 1,
            started: false,
            pending_discontinuity: false,
            discontinuities: 0,
            segment_start: 0,
            part_start: 0,
            part_samples: Vec::new(),
            timeline_end_ns: 0,
            longest_segment: Duration::ZERO,
        };
        s.set_tracks(&tracks);
        s
    }

    fn set_tracks(&mut self, tracks: &[TrackConfig]) {
        assert!(!tracks.is_empty(), "a rendition needs a track");
        self.tracks = tracks
            .iter()
            .map(|t| TrackState {
                timescale: t.timescale(),
                video: t.is_video(),
                origin_in: 0,
                base_out: 0,
                held: None,
                queue: VecDeque::new(),
                last_duration: 0,
            })
            .collect();
        self.cut = tracks.iter().position(TrackConfig::is_video).unwrap_or(0);
        self.inits
            .push((self.init_version, Bytes::from(init_segment(tracks))));
        self.started = false;
    }

    /// The timing configuration.
    pub fn config(&self) -> &SegmenterConfig {
        &self.config
    }

    /// Version of the current init segment (bumped by each discontinuity;
    /// URIs carry it so caches never mix sources).
    pub fn init_version(&self) -> u32 {
        self.init_version
    }

    /// The init segment of `version`, while a listed segment (or the next
    /// one) needs it.
    pub fn init(&self, version: u32) -> Option<Bytes> {
        self.inits
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, b)| b.clone())
    }

    /// Adds one sample; `wall` is its wall-clock time (capture time if the
    /// caller knows it, else arrival), which becomes a segment's
    /// `PROGRAM-DATE-TIME` when the sample starts one. Returns what became
    /// available.
    pub fn push(&mut self, sample: Sample, wall: SystemTime) -> Vec<Ready> {
        self.push_at(sample, wall, Boundary::Auto)
    }

    /// [`Segmenter::push`], with the caller deciding whether a keyframe of
    /// the cutting track ends the segment (ignored for other samples).
    pub fn push_at(&mut self, sample: Sample, wall: SystemTime, boundary: Boundary) -> Vec<Ready> {
        let mut ready = Vec::new();
        let Some(track) = self.tracks.get(sample.track) else {
            return ready;
        };
        let keyframe = sample.keyframe || !track.video;
        if !self.started {
            // The source starts at the cutting track's first keyframe.
            if sample.track != self.cut || !keyframe {
                return ready;
            }
            self.start_source(sample.dts);
        }
        let t = &mut self.tracks[sample.track];
        let Some(rel) = sample.dts.checked_sub(t.origin_in) else {
            return ready; // before the source's start
        };
        let held = Held {
            dts: t.base_out + rel,
            composition_offset: sample.composition_offset,
            keyframe,
            data: sample.data,
            wall,
        };
        if sample.track == self.cut {
            self.push_cut(held, boundary, &mut ready);
        } else {
            push_other(t, held);
        }
        ready
    }

    /// The source changed (a new caster, new parameter sets or a new clock):
    /// the segment in progress ends with what it has, the next one is marked
    /// `EXT-X-DISCONTINUITY` and uses a new init segment for `tracks`, and
    /// the new source's timestamps are moved to continue the old timeline.
    /// Its first segment starts at its first keyframe. Returns what became
    /// available.
    pub fn discontinuity(&mut self, tracks: Vec<TrackConfig>) -> Vec<Ready> {
        let mut ready = Vec::new();
        self.flush(&mut ready);
        // The first segment ever needs no discontinuity tag.
        self.pending_discontinuity = self.next_msn > 0;
        self.init_version += 1;
        self.set_tracks(&tracks);
        self.prune_inits();
        ready
    }

    /// True when a keyframe would help: before the first one, or once the
    /// segment in progress has reached `segment_target` (it can only end at
    /// a keyframe). The IO layer turns this into a PLI, rate-limited.
    pub fn wants_keyframe(&self) -> bool {
        if !self.started {
            return true;
        }
        let cut = &self.tracks[self.cut];
        let now = cut.held.as_ref().map_or(self.part_start, |h| h.dts);
        now.saturating_sub(self.segment_start)
            >= ticks(self.config.segment_target, cut.timescale) * 9 / 10
    }

    fn start_source(&mut self, cut_dts: u64) {
        let cut_scale = u128::from(self.tracks[self.cut].timescale);
        let end_ns = self.timeline_end_ns;
        for t in &mut self.tracks {
            let scale = u128::from(t.timescale);
            // The cut track's start, in this track's units; the same instant.
            t.origin_in = (u128::from(cut_dts) * scale / cut_scale) as u64;
            // Continue after everything written so far (rounded up).
            t.base_out = (end_ns * scale).div_ceil(1_000_000_000) as u64;
        }
        self.started = true;
    }

    fn push_cut(&mut self, new: Held, boundary: Boundary, ready: &mut Vec<Ready>) {
        let scale = self.tracks[self.cut].timescale;
        let part_target = ticks(self.config.part_target, scale);
        // A keyframe a little early still ends the segment: an encoder's
        // "every second" is 30 frames whose timestamps come through
        // rounding (RTMP's milliseconds, a wall clock), and a keyframe a
        // tick short of the target would otherwise make the segment twice
        // as long.
        // (Audio: every sample can start a segment; no slack needed.)
        let full = ticks(self.config.segment_target, scale);
        let segment_target = if self.tracks[self.cut].video {
            full * 9 / 10
        } else {
            full
        };
        if self.open.is_none() {
            // Only a keyframe gets here with no segment open (start of a
            // source), so it opens one.
            self.open_segment(new.dts, new.wall);
        }
        let t = &mut self.tracks[self.cut];
        if let Some(prev) = t.held.take() {
            if new.dts <= prev.dts {
                // Time going backwards or standing still: keep the earlier
                // sample, drop this one.
                t.held = Some(prev);
                return;
            }
            let duration = u32::try_from(new.dts - prev.dts).unwrap_or(u32::MAX);
            t.last_duration = duration;
            let fin = finish(prev, duration);
            // Close the part first if this sample would push it past the
            // target.
            if !self.part_samples.is_empty()
                && fin.dts + u64::from(duration) - self.part_start > part_target
            {
                self.close_part(fin.dts, false, ready);
            }
            self.part_samples.push(fin);
            let ends = new.keyframe
                && match boundary {
                    Boundary::Auto => new.dts - self.segment_start >= segment_target,
                    Boundary::Here => new.dts > self.segment_start,
                    Boundary::NotHere => false,
                };
            if ends {
                self.close_part(new.dts, false, ready);
                self.close_segment(ready);
                self.open_segment(new.dts, new.wall);
            } else if new.dts + u64::from(duration) - self.part_start
                > part_target + u64::from(duration / 4)
            {
                // Another sample like the last one won't fit: publish now
                // rather than a frame later. Only if it would overshoot by
                // more than timestamp jitter (a quarter of a sample; RTMP's
                // are whole ms): else the next sample tells (the check
                // above), so a part that just fits is not cut a frame
                // short, leaving a one-frame part before the keyframe.
                self.close_part(new.dts, false, ready);
            }
        }
        self.tracks[self.cut].held = Some(new);
    }

    fn open_segment(&mut self, start: u64, wall: SystemTime) {
        let discontinuity = std::mem::take(&mut self.pending_discontinuity);
        self.discontinuities += u64::from(discontinuity);
        self.open = Some(Segment {
            msn: self.next_msn,
            parts: Vec::new(),
            duration: Duration::ZERO,
            program_date_time: wall,
            discontinuity,
            discontinuity_sequence: self.discontinuities,
            init_version: self.init_version,
            complete: false,
            data: Bytes::new(),
        });
        self.next_msn += 1;
        self.segment_start = start;
        self.part_start = start;
    }

    /// Makes a part of the cutting track's samples up to `end` and the other
    /// tracks' samples that start before it (all of them if `drain`).
    fn close_part(&mut self, end: u64, drain: bool, ready: &mut Vec<Ready>) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let cut_scale = self.tracks[self.cut].timescale;
        let end_ns = ns(end, cut_scale);
        let mut runs = Vec::with_capacity(self.tracks.len());
        let mut independent = true;
        for (i, t) in self.tracks.iter_mut().enumerate() {
            let samples: Vec<Finished> = if i == self.cut {
                independent = self.part_samples.first().is_some_and(|s| s.keyframe);
                std::mem::take(&mut self.part_samples)
            } else {
                let n = if drain {
                    t.queue.len()
                } else {
                    t.queue
                        .iter()
                        .take_while(|s| ns(s.dts, t.timescale) < end_ns)
                        .count()
                };
                t.queue.drain(..n).collect()
            };
            let Some(first) = samples.first() else {
                continue;
            };
            let last = samples.last().expect("non-empty");
            let run_end = ns(last.dts + u64::from(last.duration), t.timescale);
            self.timeline_end_ns = self.timeline_end_ns.max(run_end);
            runs.push(TrackRun {
                track_id: i as u32 + 1,
                base_decode_time: first.dts,
                samples: samples
                    .iter()
                    .map(|s| SampleEntry {
                        duration: s.duration,
                        size: s.data.len() as u32,
                        keyframe: s.keyframe,
                        composition_offset: s.composition_offset,
                    })
                    .collect(),
                data: samples.into_iter().map(|s| s.data).collect(),
            });
        }
        if runs.is_empty() {
            return;
        }
        self.timeline_end_ns = self.timeline_end_ns.max(end_ns);
        let data = Bytes::from(fragment(self.next_fragment, &runs));
        self.next_fragment = self.next_fragment.wrapping_add(1);
        let duration = duration_of(end.saturating_sub(self.part_start), cut_scale);
        open.parts.push(Part {
            duration,
            independent,
            data,
        });
        open.duration += duration;
        ready.push(Ready::Part {
            msn: open.msn,
            part: open.parts.len() as u32 - 1,
        });
        self.part_start = end;
    }

    fn close_segment(&mut self, ready: &mut Vec<Ready>) {
        let Some(mut seg) = self.open.take() else {
            return;
        };
        if seg.parts.is_empty() {
            // Nothing was published under this number: give it to the next
            // segment (a request waiting on it is still right).
            self.next_msn = seg.msn;
            self.discontinuities -= u64::from(seg.discontinuity);
            self.pending_discontinuity |= seg.discontinuity;
            return;
        }
        let mut data = BytesMut::with_capacity(seg.parts.iter().map(|p| p.data.len()).sum());
        for p in &seg.parts {
            data.extend_from_slice(&p.data);
        }
        seg.data = data.freeze();
        seg.complete = true;
        self.longest_segment = self.longest_segment.max(seg.duration);
        ready.push(Ready::Segment { msn: seg.msn });
        self.segments.push_back(seg);
        self.evict();
    }

    /// Drops the oldest segments past the window, keeping at least three
    /// target durations listed (RFC 8216bis 6.2.2).
    fn evict(&mut self) {
        let floor = Duration::from_secs(3 * self.target_duration());
        let mut total: Duration = self.segments.iter().map(|s| s.duration).sum();
        while self.segments.len() > self.config.window {
            let oldest = self.segments[0].duration;
            if total - oldest < floor {
                break;
            }
            total -= oldest;
            self.segments.pop_front();
        }
        self.prune_inits();
    }

    fn prune_inits(&mut self) {
        let oldest = self
            .segments
            .front()
            .or(self.open.as_ref())
            .map_or(self.init_version, |s| s.init_version);
        self.inits.retain(|(v, _)| *v >= oldest);
    }

    /// Ends everything in progress with what it has: held samples get their
    /// track's last duration.
    fn flush(&mut self, ready: &mut Vec<Ready>) {
        if !self.started {
            return;
        }
        let mut end = self.part_start;
        for (i, t) in self.tracks.iter_mut().enumerate() {
            let Some(h) = t.held.take() else { continue };
            let guess = if t.last_duration > 0 {
                t.last_duration
            } else {
                t.timescale / 50 // 20 ms: an Opus frame, or a fast video frame
            };
            let fin = finish(h, guess);
            if i == self.cut {
                end = fin.dts + u64::from(guess);
                self.part_samples.push(fin);
            } else {
                t.queue.push_back(fin);
            }
        }
        self.close_part(end, true, ready);
        self.close_segment(ready);
        for t in &mut self.tracks {
            t.queue.clear();
        }
    }

    /// Complete segments in the window, oldest first, then the one in
    /// progress (if it has a part).
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments
            .iter()
            .chain(self.open.iter().filter(|s| !s.parts.is_empty()))
    }

    /// Media sequence number of the first listed segment.
    pub fn media_sequence(&self) -> u64 {
        self.segments
            .front()
            .or(self.open.as_ref())
            .map_or(self.next_msn, |s| s.msn)
    }

    /// `EXT-X-DISCONTINUITY-SEQUENCE`: discontinuities before the first
    /// listed segment (so each listed segment keeps its number as the window
    /// slides).
    pub fn discontinuity_sequence(&self) -> u64 {
        self.segments().next().map_or(self.discontinuities, |s| {
            s.discontinuity_sequence - u64::from(s.discontinuity)
        })
    }

    /// The last published part, as (msn, part index): what a rendition
    /// report's `LAST-MSN`/`LAST-PART` say. `None` before the first part.
    pub fn last_position(&self) -> Option<(u64, u32)> {
        let seg = self.segments().last()?;
        Some((seg.msn, seg.parts.len() as u32 - 1))
    }

    /// The part to be published next (the preload hint): the next part of
    /// the segment in progress. (It may instead come out as part 0 of the
    /// following segment, if a keyframe ends this one; both are `Pending`.)
    pub fn next_part(&self) -> (u64, u32) {
        match &self.open {
            Some(s) => (s.msn, s.parts.len() as u32),
            None => (self.next_msn, 0),
        }
    }

    /// `EXT-X-TARGETDURATION`: whole seconds, at least `segment_target`
    /// rounded up and at least the longest segment so far rounded up. It
    /// only grows; it grows only if keyframes come later than
    /// `segment_target` (see [`Segmenter::wants_keyframe`]).
    pub fn target_duration(&self) -> u64 {
        round_secs(self.config.segment_target)
            .max(round_secs(self.longest_segment))
            .max(1)
    }

    /// A part's bytes, by media sequence number and index.
    pub fn part(&self, msn: u64, part: u32) -> Lookup {
        if msn < self.media_sequence() {
            return Lookup::Gone;
        }
        let seg = self
            .segments
            .iter()
            .chain(self.open.iter())
            .find(|s| s.msn == msn);
        match seg {
            Some(s) => match s.parts.get(part as usize) {
                Some(p) => Lookup::Ready(p.data.clone()),
                None if !s.complete && part as usize == s.parts.len() => Lookup::Pending,
                None => Lookup::NotFound,
            },
            // The first part of the segment after the one in progress.
            None if msn == self.next_msn && part == 0 => Lookup::Pending,
            None => Lookup::NotFound,
        }
    }

    /// A whole segment's bytes, by media sequence number.
    pub fn segment(&self, msn: u64) -> Lookup {
        if msn < self.media_sequence() {
            return Lookup::Gone;
        }
        if let Some(s) = self.segments.iter().find(|s| s.msn == msn) {
            return Lookup::Ready(s.data.clone());
        }
        let in_progress = self.open.as_ref().map_or(self.next_msn, |s| s.msn);
        if msn == in_progress {
            Lookup::Pending
        } else {
            Lookup::NotFound
        }
    }
}

fn push_other(t: &mut TrackState, new: Held) {
    if let Some(prev) = t.held.take() {
        if new.dts <= prev.dts {
            t.held = Some(prev);
            return;
        }
        let duration = u32::try_from(new.dts - prev.dts).unwrap_or(u32::MAX);
        t.last_duration = duration;
        t.queue.push_back(finish(prev, duration));
        if t.queue.len() > MAX_QUEUED {
            t.queue.pop_front();
        }
    }
    t.held = Some(new);
}

fn finish(h: Held, duration: u32) -> Finished {
    Finished {
        dts: h.dts,
        duration,
        composition_offset: h.composition_offset,
        keyframe: h.keyframe,
        data: h.data,
    }
}

/// A duration in a timescale's ticks (rounded down).
fn ticks(d: Duration, scale: u32) -> u64 {
    (d.as_nanos() * u128::from(scale) / 1_000_000_000) as u64
}

/// Ticks to nanoseconds, for comparing tracks.
fn ns(ticks: u64, scale: u32) -> u128 {
    u128::from(ticks) * 1_000_000_000 / u128::from(scale)
}

fn duration_of(ticks: u64, scale: u32) -> Duration {
    Duration::from_nanos(ns(ticks, scale) as u64)
}

/// RFC 8216bis 4.4.3.1: each EXTINF *rounded to the nearest integer* must
/// not exceed the target duration. Rounding up instead would turn a 1 s
/// segment that is a tick long (timestamps in 90 kHz) into a 2 s target,
/// and every player's hold-back with it.
fn round_secs(d: Duration) -> u64 {
    (d.as_secs_f64() + 0.5).floor() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::testutil::{PPS, SPS_1280X720, Sim};
    use mp4_atom::{Decode, Moof};

    /// (track id, base decode time, sample count, sum of durations) of each
    /// traf in a fragment.
    fn runs(part: &Bytes) -> Vec<(u32, u64, usize, u64)> {
        let moof = Moof::decode(&mut part.as_ref()).unwrap();
        moof.traf
            .iter()
            .map(|t| {
                let mp4_atom::TrunSamples::Explicit(e) = &t.trun[0].samples else {
                    panic!("explicit trun expected")
                };
                (
                    t.tfhd.track_id,
                    t.tfdt.as_ref().unwrap().base_media_decode_time,
                    e.len(),
                    e.iter().map(|s| u64::from(s.duration.unwrap())).sum(),
                )
            })
            .collect()
    }

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn parts_and_segments_follow_the_targets() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 30);
        sim.run_until(5.0);
        let segs: Vec<_> = sim.seg.segments().collect();
        // 0..4 complete, 5th in progress with one part (4.0 .. 4.5 s).
        assert_eq!(segs.iter().filter(|s| s.complete).count(), 4);
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s.msn, i as u64);
            if s.complete {
                assert_eq!(ms(s.duration), 1000);
                assert_eq!(s.parts.len(), 2);
                let concat: Vec<u8> = s.parts.iter().flat_map(|p| p.data.to_vec()).collect();
                assert_eq!(sim.seg.segment(s.msn), Lookup::Ready(Bytes::from(concat)));
            }
            for (k, p) in s.parts.iter().enumerate() {
                assert_eq!(ms(p.duration), 500);
                assert_eq!(p.independent, k == 0, "part {k} of {}", s.msn);
            }
            assert_eq!(
                s.program_date_time,
                sim.t0 + Duration::from_secs(s.msn),
                "PDT is the wall time of the segment's keyframe"
            );
        }
        assert_eq!(sim.seg.last_position(), Some((4, 0)));
        assert_eq!(sim.seg.next_part(), (4, 1));
        assert_eq!(sim.seg.target_duration(), 1);
        // Ready came out in order: parts, then their segment.
        assert_eq!(
            &sim.ready[..4],
            &[
                Ready::Part { msn: 0, part: 0 },
                Ready::Part { msn: 0, part: 1 },
                Ready::Segment { msn: 0 },
                Ready::Part { msn: 1, part: 0 },
            ]
        );
    }

    #[test]
    fn timestamps_in_whole_milliseconds_still_fill_the_parts() {
        // RTMP carries milliseconds: 30 fps comes as steps of 33, 33 and
        // 34 ms (2970 or 3060 ticks). Parts are still 15 frames (0.5 s),
        // two a 1 s segment; not 14 frames, 15, then a part of one frame
        // before the keyframe (hls.js stalls on those).
        use crate::hls::fmp4::TrackConfig;
        let tracks = vec![TrackConfig::video(SPS_1280X720.to_vec(), PPS.to_vec()).unwrap()];
        let mut seg = Segmenter::new(SegmenterConfig::default(), tracks);
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        for i in 0..=150u64 {
            let at = (i * 1000 + 15) / 30; // ms, rounded
            let sample = Sample {
                track: 0,
                dts: at * 90,
                composition_offset: 0,
                keyframe: i.is_multiple_of(30),
                data: Bytes::from(format!("video frame {i}")),
            };
            seg.push(sample, t0 + Duration::from_millis(at));
        }
        let complete: Vec<_> = seg.segments().filter(|s| s.complete).collect();
        assert_eq!(complete.len(), 5);
        for s in complete {
            let parts: Vec<u128> = s.parts.iter().map(|p| ms(p.duration)).collect();
            assert_eq!(parts, [500, 500], "segment {}", s.msn);
        }
    }

    #[test]
    fn parts_are_published_as_soon_as_they_are_full() {
        let mut sim = Sim::with_tracks(SegmenterConfig::default(), 30, 30, true, false);
        // Frame 15 (t = 0.5 s) arriving gives frame 14 its duration and
        // shows the part is full.
        sim.run_until(0.5);
        assert!(sim.ready.is_empty());
        sim.run_until(0.51);
        assert_eq!(sim.ready, [Ready::Part { msn: 0, part: 0 }]);
    }

    #[test]
    fn tracks_stay_contiguous_and_audio_follows_the_parts() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 30);
        sim.run_until(3.0);
        let mut next = [0u64; 2];
        let mut counts = [0usize; 2];
        for s in sim.seg.segments() {
            for p in &s.parts {
                for (track, base, n, dur) in runs(&p.data) {
                    let t = track as usize - 1;
                    assert_eq!(base, next[t], "track {track} is gapless");
                    next[t] = base + dur;
                    counts[t] += n;
                }
                // Audio in a part ends near the part's end.
                let end_s = next[0] as f64 / 90_000.0;
                let audio_end_s = next[1] as f64 / 48_000.0;
                assert!(
                    (end_s - audio_end_s).abs() <= 0.04,
                    "{end_s} vs {audio_end_s}"
                );
            }
        }
        // Published: segments 0 and 1 and part (2, 0), up to 2.5 s. Audio
        // up to 2.48 s: its sample starting there had no successor yet when
        // the part closed, so it goes into the next part.
        assert_eq!(counts, [75, 124]);
    }

    #[test]
    fn samples_before_the_first_keyframe_are_dropped() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 30);
        // Start mid-GOP: frames 0..10 are not keyframes.
        sim.frames = 10;
        sim.audio_frames = 17;
        sim.run_until(2.0); // keyframe at 1.0 s
        let first = sim.seg.segments().next().unwrap();
        assert_eq!(first.program_date_time, sim.t0 + Duration::from_secs(1));
        let r = runs(&first.parts[0].data);
        assert_eq!(r[0].1, 0, "video starts at 0");
        assert_eq!(r[1].1, 0, "audio starts at 0 too (the 1.0 s sample)");
        assert!(first.parts[0].independent);
    }

    #[test]
    fn late_keyframes_make_longer_segments_and_raise_the_target() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 45);
        sim.run_until(4.6);
        let complete: Vec<_> = sim.seg.segments().filter(|s| s.complete).collect();
        assert_eq!(complete.len(), 3);
        for s in &complete {
            assert_eq!(ms(s.duration), 1500);
            assert_eq!(s.parts.len(), 3);
            assert!(s.parts.iter().all(|p| ms(p.duration) == 500));
        }
        assert_eq!(sim.seg.target_duration(), 2);
    }

    #[test]
    fn wants_a_keyframe_before_the_first_and_when_a_segment_is_due() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 90);
        assert!(sim.seg.wants_keyframe());
        sim.run_until(0.5);
        assert!(!sim.seg.wants_keyframe());
        sim.run_until(1.1);
        assert!(sim.seg.wants_keyframe());
    }

    #[test]
    fn lookups() {
        let config = SegmenterConfig {
            window: 3,
            ..SegmenterConfig::default()
        };
        let mut sim = Sim::new(config, 30, 30);
        assert_eq!(sim.seg.part(0, 0), Lookup::Pending);
        assert_eq!(sim.seg.segment(0), Lookup::Pending);
        assert_eq!(sim.seg.part(0, 1), Lookup::NotFound);
        sim.run_until(5.7);
        // Window of 3 complete (2, 3, 4) plus 5 in progress with a part.
        assert_eq!(sim.seg.media_sequence(), 2);
        assert_eq!(sim.seg.part(1, 0), Lookup::Gone);
        assert_eq!(sim.seg.segment(1), Lookup::Gone);
        assert!(matches!(sim.seg.part(2, 1), Lookup::Ready(_)));
        assert!(matches!(sim.seg.segment(3), Lookup::Ready(_)));
        assert!(matches!(sim.seg.part(5, 0), Lookup::Ready(_)));
        assert_eq!(
            sim.seg.part(3, 2),
            Lookup::NotFound,
            "past a complete segment"
        );
        assert_eq!(sim.seg.part(5, 1), Lookup::Pending, "the hinted part");
        assert_eq!(
            sim.seg.part(6, 0),
            Lookup::Pending,
            "or the next segment's first"
        );
        assert_eq!(sim.seg.part(5, 2), Lookup::NotFound);
        assert_eq!(sim.seg.part(7, 0), Lookup::NotFound);
        assert_eq!(sim.seg.segment(5), Lookup::Pending);
        assert_eq!(sim.seg.segment(6), Lookup::NotFound);
        assert!(sim.seg.init(0).is_some());
    }

    #[test]
    fn the_window_keeps_three_target_durations() {
        // A window of 1 would list less than 3 s: the floor keeps 3.
        let config = SegmenterConfig {
            window: 1,
            ..SegmenterConfig::default()
        };
        let mut sim = Sim::new(config, 30, 30);
        sim.run_until(8.5);
        let complete = sim.seg.segments().filter(|s| s.complete).count();
        assert_eq!(complete, 3);
        assert_eq!(sim.seg.media_sequence(), 5);
    }

    #[test]
    fn a_discontinuity_closes_the_segment_and_continues_the_timeline() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 30);
        sim.run_until(2.5);
        let video = crate::hls::fmp4::TrackConfig::video(SPS_1280X720.to_vec(), PPS.to_vec());
        let opus = crate::hls::fmp4::TrackConfig::Opus {
            channels: 2,
            pre_skip: 312,
        };
        let ready = sim.seg.discontinuity(vec![video.unwrap(), opus]);
        // The half-done segment 2 ends with what it had.
        assert_eq!(ready.last(), Some(&Ready::Segment { msn: 2 }));
        assert_eq!(sim.seg.init_version(), 1);
        assert!(sim.seg.init(0).is_some(), "segments 0..2 still need it");
        assert!(sim.seg.init(1).is_some());
        let seg2 = sim.seg.segments().find(|s| s.msn == 2).unwrap();
        let end_v: u64 = seg2
            .parts
            .iter()
            .flat_map(|p| runs(&p.data))
            .filter(|r| r.0 == 1)
            .map(|r| r.1 + r.3)
            .max()
            .unwrap();
        assert!(sim.seg.wants_keyframe());
        assert_eq!(sim.seg.part(3, 0), Lookup::Pending);

        // The new source: its own clock, starting mid-GOP, 10 s later.
        sim.frames = 5;
        sim.audio_frames = 0;
        sim.video_origin = 77_777_777;
        sim.audio_origin = 77_777_777 * 48 / 90;
        sim.wall_offset = Duration::from_secs(10);
        sim.run_until(2.5);
        let seg3 = sim.seg.segments().find(|s| s.msn == 3).unwrap();
        assert!(seg3.discontinuity);
        assert_eq!(seg3.init_version, 1);
        assert_eq!(seg3.discontinuity_sequence, 1);
        assert!(seg3.parts[0].independent);
        let r = runs(&seg3.parts[0].data);
        // Video continues at the old end (no gap, no jump back)...
        assert_eq!(r[0].1, end_v);
        // ...and audio at the same instant.
        let audio_base_s = r[1].1 as f64 / 48_000.0;
        assert!((audio_base_s - end_v as f64 / 90_000.0).abs() < 0.001);
        assert_eq!(seg3.program_date_time, sim.t0 + Duration::from_secs(11));

        // Once the old segments slide out, the old init goes too.
        sim.run_until(12.0);
        assert!(sim.seg.media_sequence() > 3);
        assert_eq!(sim.seg.init(0), None);
        assert_eq!(sim.seg.discontinuity_sequence(), 1);
    }

    #[test]
    fn audio_only_renditions_cut_on_audio() {
        let mut sim = Sim::with_tracks(SegmenterConfig::default(), 30, 30, false, true);
        sim.run_until(3.1);
        let complete: Vec<_> = sim.seg.segments().filter(|s| s.complete).collect();
        assert_eq!(complete.len(), 3);
        for s in complete {
            assert_eq!(ms(s.duration), 1000);
            assert!(
                s.parts
                    .iter()
                    .all(|p| p.independent && ms(p.duration) == 500)
            );
        }
    }

    #[test]
    fn unknown_tracks_and_backward_time_are_ignored() {
        let mut sim = Sim::new(SegmenterConfig::default(), 30, 30);
        sim.run_until(0.3);
        let before = sim.seg.segments().count();
        let wall = sim.t0;
        let bad = |track, dts| Sample {
            track,
            dts,
            composition_offset: 0,
            keyframe: true,
            data: Bytes::from_static(b"x"),
        };
        assert!(sim.seg.push(bad(9, 0), wall).is_empty());
        assert!(sim.seg.push(bad(0, 0), wall).is_empty());
        assert!(sim.seg.push(bad(0, sim.video_origin), wall).is_empty());
        sim.run_until(1.6);
        assert!(sim.seg.segments().count() > before);
        let s0 = sim.seg.segments().next().unwrap();
        assert_eq!(ms(s0.duration), 1000);
    }
}
