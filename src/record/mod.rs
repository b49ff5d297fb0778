//! Recording VP8 lives as live WebM (`--record DIR`): H.264 lives go to
//! fragmented MP4 (`crate::hls::record`); VP8 cannot go in MP4 for the
//! players that matter, and WebM plays in every browser.
//!
//! - [`vp8`]: VP8 frames from RTP payloads.
//! - [`webm`]: the file's bytes: a header, then Clusters.
//! - [`recording`]: which frames go in which file (sans-IO).
//! - [`WebmRecorder`] (here): the files themselves.
//! - [`stored`]: what the recordings API says of a stored file.
//!
//! Files: `{dir}/{live}-{UTC start, YYYYmmdd-HHMMSS}.webm`, a new one on
//! the hour (`--record-every`) and for each new caster. Each Cluster (at
//! most ~1 s, cut at keyframes) is appended with one `write` as soon as it
//! is complete, and the data synced every few seconds: a crash or `kill -9`
//! leaves a playable file that lacks at most the last second.

pub mod recording;
pub mod stored;
pub mod vp8;
pub mod webm;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use recording::{Out, Recording};

use crate::sfu::tap::TapPacket;

/// Data is synced to disk this often (a `kill -9` loses nothing written;
/// this is for the machine going down).
const SYNC_EVERY: Duration = Duration::from_secs(3);

/// One live's VP8 recording.
pub struct WebmRecorder {
    dir: PathBuf,
    live: String,
    recording: Recording,
    file: Option<Open>,
    /// Set once writing failed: the recording stopped (the live goes on).
    pub failed: Option<String>,
    /// Files closed whole (for the on-complete webhook).
    pub closed: Vec<PathBuf>,
}

struct Open {
    file: File,
    path: PathBuf,
    /// Clusters written: a file closed with none is removed (a simulcast
    /// layer replaced by a larger one at once).
    clusters: usize,
    synced: SystemTime,
}

impl WebmRecorder {
    pub fn new(dir: &Path, live: &str, every: Duration) -> Self {
        Self {
            dir: dir.to_path_buf(),
            live: live.to_string(),
            recording: Recording::new(every),
            file: None,
            failed: None,
            closed: Vec::new(),
        }
    }

    /// The file being written, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Whether the caster should be asked for a keyframe.
    pub fn wants_keyframe(&self, wall: SystemTime) -> bool {
        self.failed.is_none() && self.recording.wants_keyframe(wall)
    }

    /// Takes one tap packet. An error stops the recording (it is kept in
    /// `failed`).
    pub fn push(&mut self, p: &TapPacket, wall: SystemTime) -> Result<(), String> {
        if self.failed.is_some() {
            return Ok(());
        }
        let out = self.recording.push(p, wall);
        self.apply(out, wall)
    }

    /// Writes out what is pending (the packets paused).
    pub fn flush(&mut self, wall: SystemTime) -> Result<(), String> {
        if self.failed.is_some() {
            return Ok(());
        }
        let out = self.recording.flush();
        self.apply(out, wall)
    }

    /// Completes the current file (recording turned off, the live gone).
    pub fn close(&mut self, wall: SystemTime) -> Result<(), String> {
        if self.failed.is_some() {
            return Ok(());
        }
        let out = self.recording.close();
        self.apply(out, wall)
    }

    fn apply(&mut self, out: Vec<Out>, wall: SystemTime) -> Result<(), String> {
        let result = out.into_iter().try_for_each(|o| self.one(o, wall));
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.file = None;
        }
        result
    }

    fn one(&mut self, out: Out, wall: SystemTime) -> Result<(), String> {
        match out {
            Out::NewFile(header) => {
                self.finish()?;
                self.open(&header, wall)
            }
            Out::Append(cluster) => {
                let Some(f) = self.file.as_mut() else {
                    return Ok(());
                };
                f.file
                    .write_all(&cluster)
                    .map_err(|e| format!("writing {}: {e}", f.path.display()))?;
                f.clusters += 1;
                if wall.duration_since(f.synced).unwrap_or_default() >= SYNC_EVERY {
                    f.synced = wall;
                    f.file
                        .sync_data()
                        .map_err(|e| format!("syncing {}: {e}", f.path.display()))?;
                }
                Ok(())
            }
            Out::Close => self.finish(),
        }
    }

    /// Syncs and closes the current file; one without media is removed.
    fn finish(&mut self) -> Result<(), String> {
        let Some(f) = self.file.take() else {
            return Ok(());
        };
        if f.clusters == 0 {
            drop(f.file);
            let _ = std::fs::remove_file(&f.path);
            return Ok(());
        }
        f.file
            .sync_data()
            .map_err(|e| format!("syncing {}: {e}", f.path.display()))?;
        tracing::info!(live = %self.live, file = %f.path.display(), "recording file complete");
        self.closed.push(f.path);
        Ok(())
    }

    fn open(&mut self, header: &[u8], wall: SystemTime) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let stamp = crate::hls::record::stamp(wall);
        let mut path = self.dir.join(format!("{}-{stamp}.webm", self.live));
        // Two files in one second (a caster replaced at once): a suffix.
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = self.dir.join(format!("{}-{stamp}-{n}.webm", self.live));
        }
        let mut file =
            File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        file.write_all(header)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        tracing::info!(live = %self.live, file = %path.display(), "recording to a new WebM file");
        self.file = Some(Open {
            file,
            path,
            clusters: 0,
            synced: wall,
        });
        Ok(())
    }
}
