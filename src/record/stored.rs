//! What `GET /api/recordings` and the webhook say of a stored WebM file:
//! its codecs (from the header) and its duration (the time of the last
//! frame of its last whole Cluster). A live WebM has no Duration element
//! (the file is never rewritten), and reading every Cluster of an hour's
//! file for each listing would be slow: the tail is enough, since every
//! Cluster carries its own timestamp.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use webm_iterable::WebmIterator;
use webm_iterable::matroska_spec::{Master, MatroskaSpec as M, SimpleBlock};

/// The Cluster element's ID.
const CLUSTER_ID: [u8; 4] = [0x1F, 0x43, 0xB6, 0x75];

/// How much of the file's end is read: a Cluster holds at most ~1 s
/// (`webm::CLUSTER_MS`), ~1 MiB at 8 Mbit/s.
const TAIL: u64 = 2 << 20;

/// Codecs (`vp8,opus` or `vp8`) and duration in seconds; each `None` when
/// the file does not say (a file with no whole Cluster yet has no
/// duration).
pub fn describe(file: &mut File, size: u64) -> (Option<String>, Option<f64>) {
    let mut head = vec![0; size.min(4096) as usize];
    if file.read_exact(&mut head).is_err() {
        return (None, None);
    }
    let has = |what: &[u8]| head.windows(what.len()).any(|w| w == what);
    let codec = match (has(b"V_VP8"), has(b"A_OPUS")) {
        (true, true) => Some("vp8,opus".to_string()),
        (true, false) => Some("vp8".to_string()),
        _ => None,
    };
    let from = size.saturating_sub(TAIL);
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut tail).is_err() {
        return (codec, None);
    }
    (codec, last_frame_ms(&tail).map(|ms| ms as f64 / 1000.0))
}

/// The time of the last frame in the last whole Cluster of `bytes` (a
/// file's tail), in ms. A Cluster cut short by a crash is skipped, as is
/// a Cluster ID that turns out to be payload.
fn last_frame_ms(bytes: &[u8]) -> Option<i64> {
    (0..bytes.len().saturating_sub(3))
        .rev()
        .filter(|&at| bytes[at..at + 4] == CLUSTER_ID)
        .find_map(|at| cluster_end_ms(&bytes[at..]))
}

/// Parses the Cluster `bytes` starts with: its last block's time.
fn cluster_end_ms(bytes: &[u8]) -> Option<i64> {
    let mut src = bytes;
    let mut tags = WebmIterator::new(&mut src, &[M::Cluster(Master::Start)]);
    let Some(Ok(M::Cluster(Master::Full(children)))) = tags.next() else {
        return None;
    };
    let base = children.iter().find_map(|c| match c {
        M::Timestamp(t) => Some(*t as i64),
        _ => None,
    })?;
    children
        .iter()
        .filter_map(|c| match c {
            M::SimpleBlock(_) => SimpleBlock::try_from(c).ok(),
            _ => None,
        })
        .map(|b| base + i64::from(b.timestamp))
        .max()
}

#[cfg(test)]
mod tests {
    use super::super::webm::{AUDIO_TRACK, Tracks, VIDEO_TRACK, WebmWriter};
    use super::*;
    use std::io::Write;

    #[test]
    fn codecs_and_the_last_whole_clusters_time_even_after_a_crash() {
        let (mut w, mut bytes) = WebmWriter::new(Tracks {
            video: (320, 180),
            audio: true,
        });
        for ms in (0..2500u64).step_by(20) {
            bytes.extend(
                w.push(AUDIO_TRACK, ms, true, &[0xfc, 1])
                    .unwrap_or_default(),
            );
            if ms % 40 == 0 {
                let key = ms % 1000 == 0;
                let frame = vec![0x1F, 0x43, 0xB6, 0x75, ms as u8];
                bytes.extend(w.push(VIDEO_TRACK, ms, key, &frame).unwrap_or_default());
            }
        }
        let whole = bytes.len();
        // The last Cluster (2000..2480 ms) is being filled: the file ends
        // at 1980 ms, then half of a Cluster as a kill -9 leaves it.
        let last = w.flush().unwrap();
        let path = std::env::temp_dir().join(format!("vessel-webm-stored-{}", std::process::id()));
        for (cut, want) in [
            (whole, 1.98),
            (whole + last.len(), 2.48),
            (whole + last.len() / 2, 1.98),
        ] {
            let mut all = bytes.clone();
            all.extend_from_slice(&last);
            all.truncate(cut);
            File::create(&path).unwrap().write_all(&all).unwrap();
            let mut f = File::open(&path).unwrap();
            let (codec, duration) = describe(&mut f, all.len() as u64);
            assert_eq!(codec.as_deref(), Some("vp8,opus"));
            assert_eq!(
                duration,
                Some(want),
                "cut at {cut} of {}",
                whole + last.len()
            );
        }
        // A header alone: codecs, no duration.
        let (_, header) = WebmWriter::new(Tracks {
            video: (320, 180),
            audio: false,
        });
        File::create(&path).unwrap().write_all(&header).unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(
            describe(&mut f, header.len() as u64),
            (Some("vp8".into()), None)
        );
        let _ = std::fs::remove_file(&path);
    }
}
