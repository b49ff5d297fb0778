//! The IO side of recordings as a product: which files are being written,
//! which lives' recordings failed (for their `warnings`), the error count
//! (for `/metrics`), describing a stored file (for the API and the
//! webhook), the retention sweep, and the `--record-webhook` calls.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::record::Recorder;
use super::stored;
use crate::record::WebmRecorder;

/// A stored recording, as `GET /api/recordings` lists it and the webhook
/// tells of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Description {
    pub file: String,
    pub live: String,
    /// RFC 3339 UTC, from the name.
    pub start: String,
    /// Seconds: the fragments' durations summed (MP4), the last frame's
    /// time (WebM); `null` before the first fragment or Cluster.
    pub duration: Option<f64>,
    pub size: u64,
    /// RFC 6381 codecs (`avc1.42c01f,opus`); `null` when unknown.
    pub codec: Option<String>,
    /// False while the file is being written.
    pub complete: bool,
    pub url: String,
    /// The VOD playlist over the file (MP4 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub playlist: Option<String>,
    /// Seconds since the epoch, for sorting.
    #[serde(skip)]
    pub start_secs: u64,
}

/// Describes the recording `dir/name`; `None` if `name` is not a
/// recording's or the file cannot be read.
pub fn describe(dir: &Path, name: &str, writing: &HashSet<PathBuf>) -> Option<Description> {
    let parsed = stored::parse(name)?;
    let path = dir.join(name);
    let mut file = std::fs::File::open(&path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let size = meta.len();
    let (duration, codec, playlist) = if parsed.ext == "mp4" {
        let index = super::vod::index(&mut file, size);
        let stem = name.trim_end_matches(".mp4");
        (
            index.as_ref().map(|i| i.duration()),
            index
                .as_ref()
                .filter(|i| !i.codecs.is_empty())
                .map(|i| i.codecs.join(",")),
            Some(format!("/recordings/{stem}.m3u8")),
        )
    } else {
        let (codec, duration) = crate::record::stored::describe(&mut file, size);
        (duration, codec, None)
    };
    Some(Description {
        file: name.to_string(),
        live: parsed.live,
        start: stored::rfc3339(parsed.start),
        duration: duration.map(|d| (d * 1000.0).round() / 1000.0),
        size,
        codec,
        complete: !writing.contains(&path),
        url: format!("/recordings/{name}"),
        playlist,
        start_secs: parsed.start,
    })
}

/// Every recording in `dir` (of `live`, if given), newest first.
pub fn list(dir: &Path, live: Option<&str>, writing: &HashSet<PathBuf>) -> Vec<Description> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Description> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| stored::parse(name).is_some_and(|n| live.is_none_or(|l| l == n.live)))
        .filter_map(|name| describe(dir, &name, writing))
        .collect();
    out.sort_by(|a, b| b.start_secs.cmp(&a.start_secs).then(b.file.cmp(&a.file)));
    out
}

/// Deletes the finished recordings in `dir` older than `keep`.
pub fn sweep(dir: &Path, keep: Duration, writing: &HashSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let files: Vec<stored::Stored> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let meta = e.metadata().ok()?;
            meta.is_file().then_some(())?;
            Some(stored::Stored {
                name: e.file_name().into_string().ok()?,
                modified: meta.modified().ok()?,
                writing: writing.contains(&e.path()),
            })
        })
        .collect();
    for name in stored::expired(&files, SystemTime::now(), keep) {
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "recording deleted (older than --record-keep-days)")
            }
            Err(e) => tracing::warn!(file = %path.display(), "cannot delete an old recording: {e}"),
        }
    }
}

/// A live's recorder as the hub sees it after each run of packets: the
/// fMP4 one or the WebM one (a live has both; one of them idles).
pub trait Tracked {
    /// Tells a live's two recorders apart.
    const FORMAT: &'static str;
    /// The file being written.
    fn path(&self) -> Option<&Path>;
    /// Why recording stopped, if it did.
    fn failed(&self) -> Option<&str>;
    /// Files closed whole since the last call.
    fn take_closed(&mut self) -> Vec<PathBuf>;
}

impl Tracked for Recorder {
    const FORMAT: &'static str = "mp4";
    fn path(&self) -> Option<&Path> {
        Recorder::path(self)
    }
    fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
    fn take_closed(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.closed)
    }
}

impl Tracked for WebmRecorder {
    const FORMAT: &'static str = "webm";
    fn path(&self) -> Option<&Path> {
        WebmRecorder::path(self)
    }
    fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
    fn take_closed(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.closed)
    }
}

/// What the hub keeps of recordings.
pub struct Recordings {
    /// Each recorded live's files being written, by format.
    writing: Mutex<HashMap<String, HashMap<&'static str, PathBuf>>>,
    /// Lives whose recording failed, with why (and what to do).
    failures: Mutex<HashMap<String, String>>,
    /// Recordings stopped by an error, ever.
    pub errors: AtomicU64,
    webhook: Option<(String, reqwest::Client)>,
}

/// Webhook attempts per file, and the wait before the n-th retry (n s).
const WEBHOOK_TRIES: u32 = 3;

impl Recordings {
    pub fn new(webhook: Option<String>) -> Self {
        let webhook = webhook.map(|url| {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client without TLS roots builds");
            (url, client)
        });
        Self {
            writing: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            errors: AtomicU64::new(0),
            webhook,
        }
    }

    /// The files being written now.
    pub fn writing(&self) -> HashSet<PathBuf> {
        self.writing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|files| files.values().cloned())
            .collect()
    }

    pub fn failure(&self, live: &str) -> Option<String> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(live)
            .cloned()
    }

    pub fn clear_failure(&self, live: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(live);
    }

    /// After the recorder of `live` took its parts: notes the file being
    /// written and a failure, and tells the webhook of complete files.
    pub fn after<R: Tracked>(&self, live: &str, r: &mut R) {
        {
            // Called after every run of packets: nothing is allocated
            // unless the file changed.
            let mut writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
            let now = writing
                .get(live)
                .and_then(|files| files.get(R::FORMAT))
                .map(PathBuf::as_path);
            match r.path() {
                Some(p) if now != Some(p) => {
                    writing
                        .entry(live.to_string())
                        .or_default()
                        .insert(R::FORMAT, p.to_path_buf());
                }
                None if now.is_some() => {
                    if let Some(files) = writing.get_mut(live) {
                        files.remove(R::FORMAT);
                        if files.is_empty() {
                            writing.remove(live);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = r.failed() {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if !failures.contains_key(live) {
                self.errors.fetch_add(1, Ordering::Relaxed);
                failures.insert(
                    live.to_string(),
                    format!(
                        "recording stopped: {e}. Check that the recording directory exists, \
                         that Vessel may write to it and that its disk has free space; the \
                         live goes on unrecorded until its next cast"
                    ),
                );
            }
        }
        for path in r.take_closed() {
            if let Some((url, client)) = &self.webhook {
                tokio::spawn(tell(url.clone(), client.clone(), path));
            }
        }
    }
}

/// POSTs `recording.complete` for `path`, retrying a few times; never
/// holds up recording (it runs on its own task).
async fn tell(url: String, client: reqwest::Client, path: PathBuf) {
    let (Some(dir), Some(name)) = (
        path.parent().map(Path::to_path_buf),
        path.file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string),
    ) else {
        return;
    };
    let described = tokio::task::spawn_blocking(move || describe(&dir, &name, &HashSet::new()))
        .await
        .ok()
        .flatten();
    let Some(d) = described else {
        tracing::warn!(file = %path.display(), "recording webhook: the file cannot be read");
        return;
    };
    let body = serde_json::json!({
        "event": "recording.complete",
        "live": d.live,
        "file": d.file,
        "start": d.start,
        "duration": d.duration,
        "size": d.size,
        "codec": d.codec,
        "url": d.url,
    });
    for attempt in 1..=WEBHOOK_TRIES {
        let answer = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(file = %d.file, status = %r.status(), attempt,
                "recording webhook refused the notice"),
            Err(e) => tracing::warn!(file = %d.file, attempt, "recording webhook failed: {e}"),
        }
        if attempt < WEBHOOK_TRIES {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
    }
    tracing::error!(file = %d.file, "recording webhook: gave up after {WEBHOOK_TRIES} attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in `dir` last written `age` ago.
    fn file(dir: &Path, name: &str, age: Duration) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, b"x").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    #[test]
    fn the_sweep_deletes_old_finished_recordings_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("vessel-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let day = Duration::from_secs(86_400);
        // Started long ago (by its name) and last written 10 days ago.
        let old = file(&dir, "show-20200101-000000.mp4", 10 * day);
        let old_webm = file(&dir, "show-20200101-000000.webm", 10 * day);
        // Started long ago but written to yesterday (a long recording).
        let recent = file(&dir, "show-20200102-000000.mp4", day);
        // Old, but still being written.
        let writing = file(&dir, "other-20200101-000000.mp4", 10 * day);
        // Old, but not a recording's name.
        let stranger = file(&dir, "notes.txt", 10 * day);
        let being_written = HashSet::from([writing.clone()]);

        sweep(&dir, 7 * day, &being_written);
        for (path, kept) in [
            (&old, false),
            (&old_webm, false),
            (&recent, true),
            (&writing, true),
            (&stranger, true),
        ] {
            assert_eq!(path.exists(), kept, "{}", path.display());
        }
        // A directory that is gone is no error.
        std::fs::remove_dir_all(&dir).unwrap();
        sweep(&dir, 7 * day, &HashSet::new());
    }
}
