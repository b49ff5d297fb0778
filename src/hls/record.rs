//! Recording: a live's LL-HLS parts appended to a fragmented MP4 file as
//! they are made. Each part is a complete `moof` + `mdat`, written with one
//! `write` and synced at every segment, so a crash or `kill -9` leaves a
//! playable file that lacks at most the part in flight (≤ the part
//! duration, 0.2 s by default).
//!
//! Files: `{dir}/{live}-{UTC start, YYYYmmdd-HHMMSS}.mp4`. A new file starts
//! at a keyframe when the hour (`--record-every`) is up, and whenever the
//! init segment changes (a caster replaced or reconnected, a new
//! resolution): a file never mixes two sources' parameter sets.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::segmenter::{Lookup, Segmenter};

/// One live's recording.
pub struct Recorder {
    dir: PathBuf,
    live: String,
    every: Duration,
    file: Option<Open>,
    /// Set once writing failed: the recording stopped (the live goes on).
    pub failed: Option<String>,
    /// Files closed whole (rollover, new source, [`Recorder::close`]) and
    /// not yet taken by the hub (which tells the webhook).
    pub closed: Vec<PathBuf>,
}

struct Open {
    file: File,
    path: PathBuf,
    init_version: u32,
    opened: SystemTime,
    /// Which rendition feeds it (its name).
    rendition: String,
    /// Where the file starts on the live's timeline, in seconds: each
    /// fragment's decode times are moved back by it, so the file starts at
    /// 0 as players and tools expect.
    start: Option<f64>,
}

impl Recorder {
    pub fn new(dir: &Path, live: &str, every: Duration) -> Self {
        Self {
            dir: dir.to_path_buf(),
            live: live.to_string(),
            every,
            file: None,
            failed: None,
            closed: Vec::new(),
        }
    }

    /// Ends the current file, if any (the live went off air or its
    /// recording was turned off): it is complete.
    pub fn close(&mut self) {
        if let Some(old) = self.file.take() {
            tracing::info!(live = %self.live, file = %old.path.display(), "recording file complete");
            self.closed.push(old.path);
        }
    }

    /// The file being written, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// The rendition the current file records, if one is open.
    pub fn rendition(&self) -> Option<&str> {
        self.file.as_ref().map(|f| f.rendition.as_str())
    }

    /// Part `part` of segment `msn` of `rendition` is ready: appends it.
    /// An error stops the recording (it is kept in `failed`).
    pub fn on_part(
        &mut self,
        rendition: &str,
        seg: &Segmenter,
        msn: u64,
        part: u32,
        now: SystemTime,
    ) -> Result<(), String> {
        if self.failed.is_some() {
            return Ok(());
        }
        let result = self.append(rendition, seg, msn, part, now);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.file = None;
        }
        result
    }

    fn append(
        &mut self,
        rendition: &str,
        seg: &Segmenter,
        msn: u64,
        part: u32,
        now: SystemTime,
    ) -> Result<(), String> {
        let Lookup::Ready(bytes) = seg.part(msn, part) else {
            return Ok(());
        };
        let Some(segment) = seg.segments().find(|s| s.msn == msn) else {
            return Ok(());
        };
        let independent = segment
            .parts
            .get(part as usize)
            .is_some_and(|p| p.independent);
        let version = segment.init_version;
        let stale = match &self.file {
            None => true,
            Some(f) => {
                f.init_version != version
                    || f.rendition != rendition
                    || now.duration_since(f.opened).unwrap_or_default() >= self.every
            }
        };
        if stale {
            // A file starts at a keyframe; until one comes the current
            // file (if its source still fits) goes on.
            if !independent {
                let fits = self
                    .file
                    .as_ref()
                    .is_some_and(|f| f.init_version == version && f.rendition == rendition);
                if !fits {
                    return Ok(());
                }
            } else {
                let init = seg
                    .init(version)
                    .ok_or_else(|| "no init segment for the part".to_string())?;
                self.open(rendition, version, &init, now)?;
            }
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let start = *f
            .start
            .get_or_insert_with(|| video_start(&bytes).unwrap_or(0.0));
        let bytes = rebase(&bytes, start).unwrap_or_else(|| bytes.to_vec());
        f.file
            .write_all(&bytes)
            .map_err(|e| format!("writing {}: {e}", f.path.display()))?;
        if independent {
            // Once a segment (~1 s): on disk even if the machine dies.
            f.file
                .sync_data()
                .map_err(|e| format!("syncing {}: {e}", f.path.display()))?;
        }
        Ok(())
    }

    fn open(
        &mut self,
        rendition: &str,
        version: u32,
        init: &[u8],
        now: SystemTime,
    ) -> Result<(), String> {
        self.close();
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let mut path = self.dir.join(format!("{}-{}.mp4", self.live, stamp(now)));
        // Two files in one second (a caster replaced at once): a suffix.
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = self
                .dir
                .join(format!("{}-{}-{n}.mp4", self.live, stamp(now)));
        }
        let mut file =
            File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        file.write_all(init)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        tracing::info!(live = %self.live, file = %path.display(), "recording to a new file");
        self.file = Some(Open {
            file,
            path,
            init_version: version,
            opened: now,
            rendition: rendition.to_string(),
            start: None,
        });
        Ok(())
    }
}

/// The track ids and timescales of what `feed` makes: video first (90 kHz),
/// then Opus (48 kHz).
fn timescale(track_id: u32) -> u32 {
    match track_id {
        1 => super::fmp4::VIDEO_TIMESCALE,
        _ => super::fmp4::OPUS_TIMESCALE,
    }
}

/// The video decode time a fragment starts at, in seconds.
fn video_start(fragment: &[u8]) -> Option<f64> {
    use mp4_atom::Decode;
    let moof = mp4_atom::Moof::decode(&mut &fragment[..]).ok()?;
    let traf = moof.traf.iter().find(|t| t.tfhd.track_id == 1)?;
    let base = traf.tfdt.as_ref()?.base_media_decode_time;
    Some(base as f64 / f64::from(timescale(1)))
}

/// `fragment` with every track's decode time moved back by `start`
/// seconds. `None` if it does not parse (then it is written as it is).
/// The `moof` keeps its size (tfdt is always version 1), so the data
/// offsets in it stay right.
fn rebase(fragment: &[u8], start: f64) -> Option<Vec<u8>> {
    use mp4_atom::{Decode, Encode};
    let mut rest = fragment;
    let mut moof = mp4_atom::Moof::decode(&mut rest).ok()?;
    let moof_len = fragment.len() - rest.len();
    for traf in &mut moof.traf {
        let scale = f64::from(timescale(traf.tfhd.track_id));
        let tfdt = traf.tfdt.as_mut()?;
        let back = (start * scale).round() as u64;
        tfdt.base_media_decode_time = tfdt.base_media_decode_time.saturating_sub(back);
    }
    let mut out = Vec::with_capacity(fragment.len());
    moof.encode(&mut out).ok()?;
    if out.len() != moof_len {
        return None;
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// `YYYYmmdd-HHMMSS` in UTC: recordings' names (MP4 and WebM).
pub(crate) fn stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (y, m, d, hh, mm, ss) = super::stored::utc(secs);
    format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_the_utc_start() {
        // 2026-12-04 12:34:56 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_796_387_696);
        assert_eq!(stamp(t), "20261204-123456");
        assert_eq!(stamp(UNIX_EPOCH), "19700101-000000");
        // A leap day.
        assert_eq!(
            stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229-000000"
        );
    }
}
