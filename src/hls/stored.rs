//! Recording files by name, sans-IO: `{live}-{YYYYmmdd-HHMMSS}.mp4`
//! (`-N` before the extension for a second file in the same second) and
//! the WebM recorder's `.webm`; which names are recordings at all (so a
//! request can never name anything else), and which the retention sweep
//! deletes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A recording's file name, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub live: String,
    /// The UTC start, seconds since the epoch.
    pub start: u64,
    /// `mp4` or `webm`.
    pub ext: &'static str,
}

/// `name` if it is a recording's file name (nothing else is ever served or
/// deleted): a valid live name, a real UTC time, a known extension.
pub fn parse(name: &str) -> Option<Name> {
    let (stem, ext) = name.rsplit_once('.')?;
    let ext = match ext {
        "mp4" => "mp4",
        "webm" => "webm",
        _ => return None,
    };
    let (live, start) = parse_stem(stem)?;
    Some(Name { live, start, ext })
}

/// `{live}-{YYYYmmdd-HHMMSS}[-N]` → (live, start).
pub fn parse_stem(stem: &str) -> Option<(String, u64)> {
    let stem = match stem.rsplit_once('-') {
        // A `-N` suffix: 1 to 3 digits (the time part is 6).
        Some((rest, n))
            if (1..=3).contains(&n.len())
                && n.bytes().all(|b| b.is_ascii_digit())
                && !n.starts_with('0') =>
        {
            rest
        }
        _ => stem,
    };
    if stem.len() < 17 || !stem.is_char_boundary(stem.len() - 16) {
        return None;
    }
    let (live, time) = stem.split_at(stem.len() - 16);
    let time = time.strip_prefix('-')?;
    let live = live.to_string();
    if !crate::http::valid_live_name(&live) {
        return None;
    }
    let b = time.as_bytes();
    if b.len() != 15 || b[8] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = time.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let days = days_from_civil(y as i64, m as u32, d as u32);
    if days < 0 {
        return None;
    }
    // 31 February does not round-trip.
    if super::playlist::civil_from_days(days) != (y as i64, m as u32, d as u32) {
        return None;
    }
    Some((live, days as u64 * 86_400 + hh * 3600 + mm * 60 + ss))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm, the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch as UTC (year, month, day, hour, minute,
/// second).
pub fn utc(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = super::playlist::civil_from_days(days as i64);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// RFC 3339 UTC of seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// A file in the recording directory, for the retention sweep.
#[derive(Debug, Clone)]
pub struct Stored {
    pub name: String,
    pub modified: SystemTime,
    /// Being written now: never deleted.
    pub writing: bool,
}

/// The recordings older than `keep`: by the start in the name, or the
/// modification time when later (a file written into long after it
/// started is kept as long as its end is recent). Files that are not
/// recordings, and files being written, are never chosen.
pub fn expired(files: &[Stored], now: SystemTime, keep: Duration) -> Vec<String> {
    let Some(cutoff) = now.checked_sub(keep) else {
        return Vec::new();
    };
    files
        .iter()
        .filter(|f| !f.writing)
        .filter_map(|f| {
            let name = parse(&f.name)?;
            let start = UNIX_EPOCH + Duration::from_secs(name.start);
            (start.max(f.modified) < cutoff).then(|| f.name.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_names_parse_and_nothing_else_does() {
        let n = parse("show-20261204-123456.mp4").unwrap();
        assert_eq!(n.live, "show");
        assert_eq!(n.ext, "mp4");
        assert_eq!(rfc3339(n.start), "2026-12-04T12:34:56Z");
        assert_eq!(n.start, 1_796_387_696);
        let n = parse("my-live_2-20261204-123456-2.webm").unwrap();
        assert_eq!((n.live.as_str(), n.ext), ("my-live_2", "webm"));
        for bad in [
            "../etc-20261204-123456.mp4",
            "show-20261204-123456.mp4/..",
            "..",
            "show.mp4",
            "show-20261204-123456.mov",
            "show-20261204-123456.m3u8",
            "-20261204-123456.mp4",
            "show-20261304-123456.mp4",
            "show-20260231-123456.mp4",
            "show-20261204-246000.mp4",
            "show-2026120a-123456.mp4",
            "show-20261204-123456-0.mp4",
            "show-20261204-123456-1234.mp4",
            "sh/ow-20261204-123456.mp4",
            "shöw-20261204-123456.mp4",
            "show-20261204_123456.mp4",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_sweep_deletes_finished_recordings_older_than_the_limit() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_387_696); // 2026-12-04 12:34:56
        let day = Duration::from_secs(86_400);
        let file = |name: &str, modified_days_ago: u64, writing: bool| Stored {
            name: name.into(),
            modified: now - day * modified_days_ago as u32,
            writing,
        };
        let files = [
            file("a-20261120-000000.mp4", 14, false),  // old: goes
            file("a-20261201-000000.webm", 3, false),  // 3 days: stays
            file("b-20261120-000000.mp4", 14, true),   // being written: stays
            file("c-20261120-000000.mp4", 0, false),   // written into today: stays
            file("notes.txt", 30, false),              // not a recording
            file("d-20261126-120000-2.mp4", 8, false), // 8 days ago: goes
        ];
        let mut gone = expired(&files, now, day * 7);
        gone.sort();
        assert_eq!(gone, ["a-20261120-000000.mp4", "d-20261126-120000-2.mp4"]);
        assert!(expired(&files, now, day * 30).is_empty());
    }
}
