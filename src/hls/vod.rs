//! A stored recording (fragmented MP4) as video on demand, sans-IO: its
//! top-level boxes indexed (the init segment, then one fragment per
//! `moof` + `mdat`), its duration and codecs, and an HLS VOD playlist that
//! addresses the file itself by byte ranges, so nothing is re-muxed or
//! copied.
//!
//! The index reads only box headers and `moof`s (small), seeking over the
//! `mdat`s, so listing an hour-long file costs a few thousand small reads.

use std::io::{Read, Seek, SeekFrom};

use mp4_atom::Decode;

/// One `moof` + `mdat`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub offset: u64,
    pub len: u64,
    /// Of the first track (video when there is video), seconds.
    pub duration: f64,
    /// Its first sample is a sync sample: a segment may start here.
    pub keyframe: bool,
}

/// What a recording holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Index {
    /// `ftyp` + `moov`: bytes `0..init_len`.
    pub init_len: u64,
    /// RFC 6381 codecs, e.g. `avc1.42c01f,opus`.
    pub codecs: Vec<String>,
    pub fragments: Vec<Fragment>,
}

impl Index {
    pub fn duration(&self) -> f64 {
        self.fragments.iter().map(|f| f.duration).sum()
    }
}

/// A box header: (type, header length, total length). `None` at the end
/// of the data or on a box cut short (a file still being written, or cut
/// by a crash: what came before is still good).
fn header(r: &mut (impl Read + Seek), at: u64, file_len: u64) -> Option<([u8; 4], u64, u64)> {
    if at + 8 > file_len {
        return None;
    }
    r.seek(SeekFrom::Start(at)).ok()?;
    let mut h = [0u8; 16];
    r.read_exact(&mut h[..8]).ok()?;
    let kind: [u8; 4] = h[4..8].try_into().ok()?;
    let (head, len) = match u32::from_be_bytes(h[..4].try_into().ok()?) {
        1 => {
            r.read_exact(&mut h[8..16]).ok()?;
            (16, u64::from_be_bytes(h[8..16].try_into().ok()?))
        }
        // "To the end of the file": only an mdat written in one go.
        0 => (8, file_len - at),
        n => (8, u64::from(n)),
    };
    (len >= head && at + len <= file_len).then_some((kind, head, len))
}

fn read_box(r: &mut (impl Read + Seek), at: u64, len: u64) -> Option<Vec<u8>> {
    // A moof or moov is kilobytes; refuse to load anything absurd.
    if len > 64 << 20 {
        return None;
    }
    r.seek(SeekFrom::Start(at)).ok()?;
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Indexes a fragmented MP4 of `file_len` bytes. `None` if it does not
/// start with `ftyp` + `moov` (not a recording, or not even an init yet).
pub fn index(r: &mut (impl Read + Seek), file_len: u64) -> Option<Index> {
    let (kind, _, ftyp_len) = header(r, 0, file_len)?;
    if &kind != b"ftyp" {
        return None;
    }
    let (kind, _, moov_len) = header(r, ftyp_len, file_len)?;
    if &kind != b"moov" {
        return None;
    }
    let moov = read_box(r, ftyp_len, moov_len)?;
    let moov = mp4_atom::Moov::decode(&mut &moov[..]).ok()?;
    let tracks: Vec<(u32, u32, u32)> = moov
        .trak
        .iter()
        .map(|t| {
            let flags = moov
                .mvex
                .as_ref()
                .and_then(|m| m.trex.iter().find(|x| x.track_id == t.tkhd.track_id))
                .map_or(0, |x| x.default_sample_flags);
            (t.tkhd.track_id, t.mdia.mdhd.timescale.max(1), flags)
        })
        .collect();
    let codecs = moov
        .trak
        .iter()
        .flat_map(|t| t.mdia.minf.stbl.stsd.codecs.iter())
        .map(codec_name)
        .collect();
    let mut out = Index {
        init_len: ftyp_len + moov_len,
        codecs,
        fragments: Vec::new(),
    };
    let mut at = out.init_len;
    while let Some((kind, _, len)) = header(r, at, file_len) {
        if &kind != b"moof" {
            // Anything else between fragments (free, sidx…) is skipped.
            at += len;
            continue;
        }
        let Some((mdat, _, mdat_len)) = header(r, at + len, file_len) else {
            break;
        };
        if &mdat != b"mdat" {
            break;
        }
        let Some(moof) = read_box(r, at, len) else {
            break;
        };
        let Ok(moof) = mp4_atom::Moof::decode(&mut &moof[..]) else {
            break;
        };
        let (duration, keyframe) = fragment_timing(&moof, &tracks);
        out.fragments.push(Fragment {
            offset: at,
            len: len + mdat_len,
            duration,
            keyframe,
        });
        at += len + mdat_len;
    }
    Some(out)
}

/// The first traf's duration (seconds) and whether its first sample is a
/// sync sample; the first track is video when the live has video.
fn fragment_timing(moof: &mp4_atom::Moof, tracks: &[(u32, u32, u32)]) -> (f64, bool) {
    // Video (the first track of the init) when this fragment has it.
    let traf = tracks
        .first()
        .and_then(|(id, _, _)| moof.traf.iter().find(|t| t.tfhd.track_id == *id))
        .or_else(|| moof.traf.first());
    let Some(traf) = traf else {
        return (0.0, false);
    };
    let (scale, trex_flags) = tracks
        .iter()
        .find(|(id, _, _)| *id == traf.tfhd.track_id)
        .map_or((1, 0), |(_, s, f)| (*s, *f));
    let default_duration = traf.tfhd.default_sample_duration.unwrap_or(0);
    let default_flags = traf.tfhd.default_sample_flags.unwrap_or(trex_flags);
    let mut ticks = 0u64;
    let mut first_flags = None;
    for run in &traf.trun {
        for s in run.samples.iter() {
            ticks += u64::from(s.duration.unwrap_or(default_duration));
            first_flags.get_or_insert(s.flags.unwrap_or(default_flags));
        }
    }
    // Sync: is_non_sync_sample (bit 16) clear.
    let keyframe = first_flags.is_some_and(|f| f & 0x0001_0000 == 0);
    (ticks as f64 / f64::from(scale), keyframe)
}

fn codec_name(c: &mp4_atom::Codec) -> String {
    match c {
        mp4_atom::Codec::Avc1(a) => format!(
            "avc1.{:02x}{:02x}{:02x}",
            a.avcc.avc_profile_indication,
            a.avcc.profile_compatibility,
            a.avcc.avc_level_indication
        ),
        mp4_atom::Codec::Opus(_) => "opus".into(),
        mp4_atom::Codec::Mp4a(_) => "mp4a.40.2".into(),
        mp4_atom::Codec::Vp08(_) => "vp08".into(),
        mp4_atom::Codec::Vp09(_) => "vp09".into(),
        mp4_atom::Codec::Av01(_) => "av01".into(),
        _ => "unknown".into(),
    }
}

/// A segment: fragments from one starting at a keyframe, at least
/// `min` seconds long (the last one may be shorter).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
    pub duration: f64,
}

pub fn segments(fragments: &[Fragment], min: f64) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for f in fragments {
        match out.last_mut() {
            // 10 % slack, as the live segmenter has: fragment durations
            // summed in floating point (and encoders' keyframes) come a
            // hair short of a whole second.
            Some(s) if !(f.keyframe && s.duration >= min * 0.9) => {
                s.len = f.offset + f.len - s.offset;
                s.duration += f.duration;
            }
            _ => out.push(Segment {
                offset: f.offset,
                len: f.len,
                duration: f.duration,
            }),
        }
    }
    out
}

/// The VOD playlist of the recording `uri` (how the playlist names the
/// file, query included). `complete`: the file is closed (`VOD`,
/// `ENDLIST`); otherwise it is still growing (`EVENT`, no `ENDLIST`:
/// players reload it).
pub fn playlist(index: &Index, uri: &str, complete: bool) -> String {
    use std::fmt::Write;
    let segments = segments(&index.fragments, 1.0);
    let target = segments
        .iter()
        .map(|s| s.duration.round() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut p = String::new();
    let _ = writeln!(p, "#EXTM3U");
    let _ = writeln!(p, "#EXT-X-VERSION:7");
    let _ = writeln!(p, "#EXT-X-TARGETDURATION:{target}");
    let _ = writeln!(p, "#EXT-X-MEDIA-SEQUENCE:0");
    let kind = if complete { "VOD" } else { "EVENT" };
    let _ = writeln!(p, "#EXT-X-PLAYLIST-TYPE:{kind}");
    let _ = writeln!(p, "#EXT-X-INDEPENDENT-SEGMENTS");
    let _ = writeln!(
        p,
        "#EXT-X-MAP:URI=\"{uri}\",BYTERANGE=\"{}@0\"",
        index.init_len
    );
    for s in &segments {
        let _ = writeln!(p, "#EXTINF:{:.5},", s.duration);
        let _ = writeln!(p, "#EXT-X-BYTERANGE:{}@{}", s.len, s.offset);
        let _ = writeln!(p, "{uri}");
    }
    if complete {
        let _ = writeln!(p, "#EXT-X-ENDLIST");
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::fmp4::{SampleEntry, TrackConfig, TrackRun, fragment, init_segment};
    use bytes::Bytes;

    /// A recording: `frames` 30 fps video frames, two per fragment, a
    /// keyframe every `gop` frames; audio alongside.
    fn file(frames: u32, gop: u32) -> Vec<u8> {
        let video = TrackConfig::Video {
            sps: vec![0x67, 0x42, 0xc0, 0x1f, 0xd9],
            pps: vec![0x68, 0xce, 0x3c, 0x80],
            width: 320,
            height: 240,
        };
        let audio = TrackConfig::Opus {
            channels: 2,
            pre_skip: 312,
        };
        let mut out = init_segment(&[video, audio]);
        for n in (0..frames).step_by(2) {
            let samples: Vec<SampleEntry> = (n..n + 2)
                .map(|i| SampleEntry {
                    duration: 3000,
                    size: 4,
                    keyframe: i % gop == 0,
                    composition_offset: 0,
                })
                .collect();
            let runs = [
                TrackRun {
                    track_id: 1,
                    base_decode_time: u64::from(n) * 3000,
                    samples,
                    data: vec![Bytes::from_static(&[0, 0, 0, 0]); 2],
                },
                TrackRun {
                    track_id: 2,
                    base_decode_time: u64::from(n) * 3200,
                    samples: vec![SampleEntry {
                        duration: 3200,
                        size: 3,
                        keyframe: true,
                        composition_offset: 0,
                    }],
                    data: vec![Bytes::from_static(&[1, 2, 3])],
                },
            ];
            out.extend(fragment(n / 2 + 1, &runs));
        }
        out
    }

    fn index_of(bytes: &[u8]) -> Option<Index> {
        index(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn indexes_fragments_durations_and_keyframes() {
        let bytes = file(120, 30);
        let index = index_of(&bytes).unwrap();
        assert_eq!(index.codecs, ["avc1.42c01f", "opus"]);
        assert_eq!(index.fragments.len(), 60);
        assert!(
            (index.duration() - 4.0).abs() < 1e-9,
            "{}",
            index.duration()
        );
        let keys: Vec<usize> = (0..60).filter(|&i| index.fragments[i].keyframe).collect();
        assert_eq!(keys, [0, 15, 30, 45]);
        // Fragments tile the file after the init.
        assert_eq!(index.fragments[0].offset, index.init_len);
        let last = index.fragments.last().unwrap();
        assert_eq!(last.offset + last.len, bytes.len() as u64);
    }

    #[test]
    fn a_file_cut_mid_fragment_keeps_what_is_whole() {
        let bytes = file(60, 30);
        let whole = index_of(&bytes).unwrap().fragments.len();
        let cut = index_of(&bytes[..bytes.len() - 5]).unwrap();
        assert_eq!(cut.fragments.len(), whole - 1);
        assert!(index_of(&bytes[..20]).is_none(), "no init yet");
        assert!(index_of(b"not an mp4 file at all").is_none());
    }

    #[test]
    fn segments_start_at_keyframes_and_last_at_least_a_second() {
        let f = |offset: u64, keyframe: bool| Fragment {
            offset,
            len: 10,
            duration: 0.5,
            keyframe,
        };
        // Keyframes every 0.5 s: segments of 1 s; a lone keyframe-less
        // stretch stays in its segment.
        let frags = [
            f(0, true),
            f(10, true),
            f(20, true),
            f(30, false),
            f(40, false),
            f(50, true),
        ];
        let segs = segments(&frags, 1.0);
        let got: Vec<(u64, u64)> = segs.iter().map(|s| (s.offset, s.len)).collect();
        assert_eq!(got, [(0, 20), (20, 30), (50, 10)]);
        assert_eq!(segs[1].duration, 1.5);
    }

    #[test]
    fn the_playlist_addresses_the_file_by_byte_ranges() {
        let bytes = file(120, 30);
        let index = index_of(&bytes).unwrap();
        let text = playlist(&index, "x-20261204-120000.mp4?token=t", true);
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect(&text);
        assert_eq!(parsed.segments.len(), 4, "{text}");
        assert_eq!(parsed.playlist_type, Some(m3u8_rs::MediaPlaylistType::Vod));
        assert!(parsed.end_list);
        assert_eq!(parsed.target_duration, 1);
        let map = parsed.segments[0].map.as_ref().unwrap();
        assert_eq!(map.byte_range.as_ref().unwrap().length, index.init_len);
        let total: u64 = parsed
            .segments
            .iter()
            .map(|s| s.byte_range.as_ref().unwrap().length)
            .sum();
        assert_eq!(total + index.init_len, bytes.len() as u64);
        // Still being written: an event playlist without an end.
        let open = playlist(&index, "x.mp4", false);
        assert!(open.contains("#EXT-X-PLAYLIST-TYPE:EVENT") && !open.contains("ENDLIST"));
    }
}
