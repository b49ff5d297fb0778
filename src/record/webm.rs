//! A live WebM file, sans-IO: the header once, then one Cluster at a time,
//! each as bytes to append. The Segment has an unknown size (the file is
//! never rewritten, so whatever was appended before a crash is a whole,
//! playable file); each Cluster is written at once, so it has a known size.
//!
//! EBML is encoded with `webm-iterable` (its `TagWriter` over the Matroska
//! spec): pure Rust, writes unknown-size masters, and its reader checks
//! our output in tests. `mkv-element` would do too but is younger and
//! reads/writes whole elements only; libwebm needs C++ and cmake.

use webm_iterable::WebmWriter as TagWriter;
use webm_iterable::WriteOptions;
use webm_iterable::matroska_spec::{Master, MatroskaSpec as M, SimpleBlock};

/// Track numbers in the file.
pub const VIDEO_TRACK: u64 = 1;
pub const AUDIO_TRACK: u64 = 2;

/// A Cluster ends at a video keyframe or when this much media is in it:
/// what a crash can lose.
pub const CLUSTER_MS: u64 = 1000;

/// Opus may need 80 ms of decoding before a seek point (the WebM rule).
const OPUS_SEEK_PRE_ROLL_NS: u64 = 80_000_000;

/// What the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracks {
    /// VP8 picture size.
    pub video: (u16, u16),
    /// Opus audio (48 kHz, stereo as WebRTC declares it).
    pub audio: bool,
}

/// One WebM file being written.
pub struct WebmWriter {
    /// Keeps the Segment open (unknown size) across writes.
    ebml: TagWriter<Vec<u8>>,
    /// The Cluster being filled: its timestamp, blocks, and whether it
    /// has video.
    cluster: Option<(u64, Vec<M>, bool)>,
    tracks: Tracks,
}

impl WebmWriter {
    /// A new file: returns the writer and the header (EBML header, the
    /// Segment's start, Info, Tracks).
    pub fn new(tracks: Tracks) -> (Self, Vec<u8>) {
        let mut ebml = TagWriter::new(Vec::new());
        let header = M::Ebml(Master::Full(vec![
            M::EbmlVersion(1),
            M::EbmlReadVersion(1),
            M::EbmlMaxIdLength(4),
            M::EbmlMaxSizeLength(8),
            M::DocType("webm".into()),
            M::DocTypeVersion(4),
            M::DocTypeReadVersion(2),
        ]));
        let info = M::Info(Master::Full(vec![
            // Block times in milliseconds.
            M::TimestampScale(1_000_000),
            M::MuxingApp("vessel".into()),
            M::WritingApp("vessel".into()),
        ]));
        let (w, h) = tracks.video;
        let mut entries = vec![M::TrackEntry(Master::Full(vec![
            M::TrackNumber(VIDEO_TRACK),
            M::TrackUID(VIDEO_TRACK),
            M::TrackType(1),
            M::CodecID("V_VP8".into()),
            M::Video(Master::Full(vec![
                M::PixelWidth(u64::from(w)),
                M::PixelHeight(u64::from(h)),
            ])),
        ]))];
        if tracks.audio {
            entries.push(M::TrackEntry(Master::Full(vec![
                M::TrackNumber(AUDIO_TRACK),
                M::TrackUID(AUDIO_TRACK),
                M::TrackType(2),
                M::CodecID("A_OPUS".into()),
                M::CodecPrivate(opus_head(2)),
                // WebRTC signals no pre-skip: nothing to trim at the start.
                M::CodecDelay(0),
                M::SeekPreRoll(OPUS_SEEK_PRE_ROLL_NS),
                M::Audio(Master::Full(vec![
                    M::SamplingFrequency(48_000.0),
                    M::Channels(2),
                ])),
            ])));
        }
        let written = ebml.write(&header).and_then(|()| {
            ebml.write_advanced(
                &M::Segment(Master::Start),
                WriteOptions::is_unknown_sized_element(),
            )
        });
        let written = written
            .and_then(|()| ebml.write(&info))
            .and_then(|()| ebml.write(&M::Tracks(Master::Full(entries))));
        // Only a Vec is written to, with tags the spec allows there.
        debug_assert!(written.is_ok(), "{written:?}");
        let bytes = std::mem::take(ebml.get_mut());
        (
            Self {
                ebml,
                cluster: None,
                tracks,
            },
            bytes,
        )
    }

    pub fn tracks(&self) -> Tracks {
        self.tracks
    }

    /// Adds a frame at `ms` (file time). Returns the Cluster this closed,
    /// if any, to append.
    pub fn push(&mut self, track: u64, ms: u64, keyframe: bool, data: &[u8]) -> Option<Vec<u8>> {
        if track == AUDIO_TRACK && !self.tracks.audio {
            return None;
        }
        let starts_cluster = match &self.cluster {
            None => true,
            // A keyframe starts a Cluster (players seek to those), unless
            // only audio came before it in this one.
            Some((start, _, video)) => {
                (track == VIDEO_TRACK && keyframe && *video) || ms >= start + CLUSTER_MS
            }
        };
        let closed = if starts_cluster { self.flush() } else { None };
        let (start, blocks, video) = self.cluster.get_or_insert_with(|| (ms, Vec::new(), false));
        *video |= track == VIDEO_TRACK;
        // Audio that arrived just after a keyframe but is a little older
        // than it gets a negative relative time (allowed: it is signed).
        let relative = (ms as i64 - *start as i64).clamp(i16::MIN.into(), i16::MAX.into()) as i16;
        let keyframe = keyframe || track == AUDIO_TRACK;
        blocks.push(
            SimpleBlock::new_uncheked(data, track, relative, false, None, false, keyframe).into(),
        );
        closed
    }

    /// Closes the Cluster being filled: its bytes, if it had blocks.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        let (start, mut blocks, _) = self.cluster.take()?;
        let mut children = vec![M::Timestamp(start)];
        children.append(&mut blocks);
        let written = self.ebml.write(&M::Cluster(Master::Full(children)));
        debug_assert!(written.is_ok(), "{written:?}");
        Some(std::mem::take(self.ebml.get_mut()))
    }
}

/// The Opus identification header (RFC 7845 5.1) Matroska's A_OPUS wants
/// as CodecPrivate: no pre-skip, 48 kHz, no gain, mapping family 0.
fn opus_head(channels: u8) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1);
    h.push(channels);
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use webm_iterable::WebmIterator;
    use webm_iterable::matroska_spec::EbmlTag;

    fn parse(bytes: &[u8]) -> Vec<M> {
        let mut src = bytes;
        WebmIterator::new(&mut src, &[M::Cluster(Master::Start)])
            .map(|t| t.expect("valid EBML"))
            .collect()
    }

    #[test]
    fn the_header_says_vp8_and_opus_with_their_parameters() {
        let (_, header) = WebmWriter::new(Tracks {
            video: (640, 360),
            audio: true,
        });
        let tags = parse(&header);
        assert!(tags.contains(&M::DocType("webm".into())));
        assert!(tags.contains(&M::TimestampScale(1_000_000)));
        assert!(tags.contains(&M::CodecID("V_VP8".into())));
        assert!(tags.contains(&M::PixelWidth(640)));
        assert!(tags.contains(&M::PixelHeight(360)));
        assert!(tags.contains(&M::CodecID("A_OPUS".into())));
        assert!(tags.contains(&M::CodecPrivate(opus_head(2))));
        assert!(tags.contains(&M::SeekPreRoll(OPUS_SEEK_PRE_ROLL_NS)));
        // The Segment's size is unknown (all ones): the file can grow.
        let at = header
            .windows(4)
            .position(|w| w == [0x18, 0x53, 0x80, 0x67])
            .unwrap();
        assert_eq!(
            header[at + 4..at + 12],
            [0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn clusters_start_at_keyframes_or_after_a_second_and_parse_back() {
        let (mut w, mut file) = WebmWriter::new(Tracks {
            video: (320, 180),
            audio: true,
        });
        let mut closed = Vec::new();
        // 3 s at 30 fps with keyframes at 0 and 1980 ms, audio every 20 ms.
        for ms in 0..3000u64 {
            if ms % 20 == 0
                && let Some(c) = w.push(AUDIO_TRACK, ms, false, &[0xfc, 1])
            {
                closed.push(ms);
                file.extend(c);
            }
            if ms % 33 == 0
                && let Some(c) = w.push(VIDEO_TRACK, ms, ms % 1980 == 0, &[ms as u8; 10])
            {
                closed.push(ms);
                file.extend(c);
            }
        }
        file.extend(w.flush().unwrap());
        assert!(w.flush().is_none());
        // Cut at 1000 ms (time), 1980 ms (keyframe), 2980 (time); the
        // rest by the flush.
        assert_eq!(closed, vec![1000, 1980, 2980]);
        let tags = parse(&file);
        let clusters: Vec<u64> = tags
            .iter()
            .filter_map(|t| match t {
                M::Cluster(Master::Full(c)) => c.iter().find_map(|x| match x {
                    M::Timestamp(t) => Some(*t),
                    _ => None,
                }),
                _ => None,
            })
            .collect();
        assert_eq!(clusters, vec![0, 1000, 1980, 2980]);
        // Every block comes back with its track, time and keyframe flag.
        let mut video = 0;
        for t in &tags {
            let M::Cluster(Master::Full(c)) = t else {
                continue;
            };
            let base = c
                .iter()
                .find_map(|x| {
                    if let M::Timestamp(t) = x {
                        Some(*t as i64)
                    } else {
                        None
                    }
                })
                .unwrap();
            for b in c {
                let M::SimpleBlock(_) = b else { continue };
                let b: SimpleBlock = b.try_into().unwrap();
                let ms = base + i64::from(b.timestamp);
                if b.track == VIDEO_TRACK {
                    assert_eq!(b.raw_frame_data(), [ms as u8; 10]);
                    assert_eq!(b.keyframe, ms % 1980 == 0, "{ms}");
                    video += 1;
                } else {
                    assert!(b.keyframe && ms % 20 == 0);
                }
            }
        }
        assert_eq!(video, 91);
        assert!(tags.iter().all(|t| t.get_id() != 0xEC), "no Void");
    }

    /// A file's blocks as (track, file ms), in file order.
    pub(crate) fn blocks(file: &[u8]) -> Vec<(u64, i64)> {
        let mut out = Vec::new();
        for t in parse(file) {
            let M::Cluster(Master::Full(c)) = t else {
                continue;
            };
            let base = c
                .iter()
                .find_map(|x| match x {
                    M::Timestamp(t) => Some(*t as i64),
                    _ => None,
                })
                .unwrap();
            for b in c {
                let M::SimpleBlock(_) = b else { continue };
                let b: SimpleBlock = (&b).try_into().unwrap();
                out.push((b.track, base + i64::from(b.timestamp)));
            }
        }
        out
    }

    #[test]
    fn no_audio_track_no_audio_blocks() {
        let (mut w, header) = WebmWriter::new(Tracks {
            video: (320, 180),
            audio: false,
        });
        assert!(!parse(&header).contains(&M::CodecID("A_OPUS".into())));
        assert!(w.push(AUDIO_TRACK, 0, false, &[1]).is_none());
        assert!(w.flush().is_none());
    }
}
