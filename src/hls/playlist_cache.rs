//! Rendered media playlists, kept until the feed moves on.
//!
//! Every LL-HLS player asks for the playlist once per part (five times a
//! second at 0.2 s parts), and all of a live's players ask for the same
//! few: one per rendition, with or without `_HLS_skip`. Rendering one is
//! string formatting over the window's ~7 segments and their parts, which
//! came to a tenth of the server's CPU with 1000 players (BENCHMARKS.md,
//! "LL-HLS: HTTP cost"); rendered once per part, the rest are copies of a
//! reference-counted buffer.

use std::time::Duration;

use bytes::Bytes;

use super::feed::Feed;

/// What a media playlist is rendered from, in brief: every rendition's
/// window and position (a playlist carries the others' rendition
/// reports). Equal stamps, equal playlists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(Vec<Option<Position>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    media_sequence: u64,
    discontinuity_sequence: u64,
    last: Option<(u64, u32)>,
    next: (u64, u32),
    target: u64,
    init_version: u32,
    /// The newest segment's length and whether it is complete (it can
    /// close without a new part, at the end of a caster).
    newest: Option<(Duration, bool)>,
}

impl Stamp {
    pub fn of(feed: &Feed) -> Self {
        Self(
            feed.renditions
                .iter()
                .map(|r| {
                    let s = r.segmenter.as_ref()?;
                    Some(Position {
                        media_sequence: s.media_sequence(),
                        discontinuity_sequence: s.discontinuity_sequence(),
                        last: s.last_position(),
                        next: s.next_part(),
                        target: s.target_duration(),
                        init_version: s.init_version(),
                        newest: s.segments().last().map(|x| (x.duration, x.complete)),
                    })
                })
                .collect(),
        )
    }
}

/// A live's rendered media playlists: one per rendition, delta update
/// or not, and query its URIs carry (a private live's media key). A few
/// entries (renditions × 2), so a list: a lookup allocates nothing.
#[derive(Default)]
pub struct PlaylistCache {
    entries: Vec<Entry>,
}

struct Entry {
    rendition: String,
    skip: bool,
    query: String,
    stamp: Stamp,
    body: Bytes,
}

/// More than any live has (renditions × 2); past it the oldest goes, in
/// case renditions come and go with casters.
const MAX_ENTRIES: usize = 16;

impl PlaylistCache {
    /// The playlist rendered for these at `stamp`, if it was.
    pub fn get(&self, rendition: &str, skip: bool, query: &str, stamp: &Stamp) -> Option<Bytes> {
        self.entries
            .iter()
            .find(|e| {
                e.rendition == rendition && e.skip == skip && e.query == query && &e.stamp == stamp
            })
            .map(|e| e.body.clone())
    }

    pub fn put(&mut self, rendition: &str, skip: bool, query: &str, stamp: Stamp, body: Bytes) {
        self.entries
            .retain(|e| !(e.rendition == rendition && e.skip == skip && e.query == query));
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.remove(0);
        }
        self.entries.push(Entry {
            rendition: rendition.to_owned(),
            skip,
            query: query.to_owned(),
            stamp,
            body,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(last: u64) -> Stamp {
        Stamp(vec![Some(Position {
            media_sequence: 0,
            discontinuity_sequence: 0,
            last: Some((last, 0)),
            next: (last, 1),
            target: 1,
            init_version: 0,
            newest: None,
        })])
    }

    #[test]
    fn a_playlist_is_kept_until_the_stamp_moves_and_per_rendition_skip_and_query() {
        let mut c = PlaylistCache::default();
        c.put("main", false, "", stamp(1), Bytes::from_static(b"a"));
        c.put("main", true, "", stamp(1), Bytes::from_static(b"b"));
        c.put("main", false, "?k=x", stamp(1), Bytes::from_static(b"c"));
        assert_eq!(c.get("main", false, "", &stamp(1)).unwrap(), "a");
        assert_eq!(c.get("main", true, "", &stamp(1)).unwrap(), "b");
        assert_eq!(c.get("main", false, "?k=x", &stamp(1)).unwrap(), "c");
        assert!(c.get("main", false, "", &stamp(2)).is_none());
        assert!(c.get("h", false, "", &stamp(1)).is_none());
        // A new rendering replaces the old one.
        c.put("main", false, "", stamp(2), Bytes::from_static(b"d"));
        assert!(c.get("main", false, "", &stamp(1)).is_none());
        assert_eq!(c.get("main", false, "", &stamp(2)).unwrap(), "d");
        assert_eq!(c.entries.len(), 3);
        for i in 0..40 {
            c.put(&format!("r{i}"), false, "", stamp(1), Bytes::new());
        }
        assert_eq!(c.entries.len(), MAX_ENTRIES);
    }
}
