//! The bounded randomized run of every fuzz target: its seeds as they are,
//! then a few thousand damaged copies of them (records dropped, repeated,
//! swapped, spliced from other seeds; flags changed; JSON, SDP lines and
//! bytes damaged). Without coverage feedback it finds less than `fuzz/`,
//! but it runs in `cargo test`, so CI exercises every target.
//!
//! `VESSEL_FUZZ_SEED=<n>` replays a run; `VESSEL_FUZZ_RUNS=<n>` sets the
//! inputs per target (for a longer run). A failing input is also written to
//! the temporary directory, for `fuzz/`'s binaries to replay.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::Value;

use super::seeds::{self, Seeds};
use super::{Records, TARGETS, record};
use crate::fuzz_json;

/// Inputs per target: `default`, or what `VESSEL_FUZZ_RUNS` says.
fn runs(default: usize) -> usize {
    std::env::var("VESSEL_FUZZ_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// How a target's inputs are shaped, for the mutator.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// A sequence of records (`fuzzing::Records`).
    Records,
    /// A mode byte, then SDP text.
    Sdp,
    /// A byte stream.
    Bytes,
}

/// Runs `name` on its seeds, then on `count` mutants of them.
fn run(name: &str, shape: Shape, count: usize) {
    let target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a target of that name")
        .1;
    let corpus = seeds::of(name);
    let (mut rng, seed) = fuzz_json::rng();
    let inputs = corpus
        .iter()
        .map(|(_, s)| s.clone())
        .chain((0..count).map(|_| {
            let base = &corpus[rng.random_range(0..corpus.len())].1;
            mutate(&mut rng, shape, base, &corpus)
        }));
    for (i, input) in inputs.enumerate() {
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let path = std::env::temp_dir().join(format!("vessel-fuzz-{name}-{seed}-{i}"));
            let _ = std::fs::write(&path, &input);
            panic!(
                "VESSEL_FUZZ_SEED={seed}: {name} failed on input {i} ({} bytes, written to {})",
                input.len(),
                path.display()
            );
        }
    }
}

/// A damaged copy of `base`: one to four mutations.
fn mutate(rng: &mut StdRng, shape: Shape, base: &[u8], corpus: &Seeds) -> Vec<u8> {
    let mut data = base.to_vec();
    for _ in 0..rng.random_range(1..5) {
        data = match shape {
            Shape::Records if rng.random_bool(0.8) => records(rng, &data, corpus),
            Shape::Sdp if rng.random_bool(0.8) && !data.is_empty() => {
                let text = String::from_utf8_lossy(&data[1..]);
                let mode = if rng.random_bool(0.1) {
                    rng.random()
                } else {
                    data[0]
                };
                [&[mode][..], lines(rng, &text).as_bytes()].concat()
            }
            _ => bytes(rng, data),
        };
    }
    data
}

/// Damage at the level of records.
fn records(rng: &mut StdRng, data: &[u8], corpus: &Seeds) -> Vec<u8> {
    let mut rs: Vec<(u8, Vec<u8>)> = Records::new(data).map(|(f, b)| (f, b.to_vec())).collect();
    let other = &corpus[rng.random_range(0..corpus.len())].1;
    let others: Vec<(u8, Vec<u8>)> = Records::new(other).map(|(f, b)| (f, b.to_vec())).collect();
    let at = rng.random_range(0..=rs.len());
    match rng.random_range(0..8) {
        0 if at < rs.len() => rs[at].0 ^= 1 << rng.random_range(0..8),
        1 if at < rs.len() => {
            rs.remove(at);
        }
        2 if at < rs.len() => {
            let r = rs[at].clone();
            rs.insert(rng.random_range(0..rs.len()), r);
        }
        3 if rs.len() > 1 && at < rs.len() => {
            let j = rng.random_range(0..rs.len());
            rs.swap(at, j);
        }
        4 if !others.is_empty() => {
            let r = others[rng.random_range(0..others.len())].clone();
            rs.insert(at, r);
        }
        5 => {
            let len = rng.random_range(0..64);
            rs.insert(at, (rng.random(), (0..len).map(|_| rng.random()).collect()));
        }
        _ if at < rs.len() => {
            let body = std::mem::take(&mut rs[at].1);
            rs[at].1 = body_of(rng, body);
        }
        _ => {}
    }
    rs.iter()
        .flat_map(|(f, b)| record(*f, &b[..b.len().min(usize::from(u16::MAX))]))
        .collect()
}

/// Damage to a record's body, by what it holds: JSON (maybe behind a byte
/// that picks an event), SDP-like lines, or bytes.
fn body_of(rng: &mut StdRng, body: Vec<u8>) -> Vec<u8> {
    for skip in [0, 1] {
        if let Some(Ok(v)) = body
            .get(skip..)
            .map(serde_json::from_slice::<Value>)
            .filter(|_| rng.random_bool(0.8))
        {
            let damaged = fuzz_json::mutate(rng, &v).to_string();
            return [&body[..skip], damaged.as_bytes()].concat();
        }
    }
    match std::str::from_utf8(&body) {
        Ok(text) if text.contains("\r\n") && rng.random_bool(0.8) => lines(rng, text).into_bytes(),
        _ => bytes(rng, body),
    }
}

/// Damage to text lines: dropped, repeated, swapped, cut, numbers made
/// extreme, junk attributes added.
fn lines(rng: &mut StdRng, text: &str) -> String {
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
    let i = rng.random_range(0..lines.len());
    match rng.random_range(0..6) {
        0 => {
            lines.remove(i);
        }
        1 => {
            let l = lines[i].clone();
            lines.insert(rng.random_range(0..lines.len()), l);
        }
        2 => {
            let j = rng.random_range(0..lines.len());
            lines.swap(i, j);
        }
        3 => {
            let extreme = ["0", "-1", "65536", "4294967296", "99999999999999999999", ""];
            let n = extreme[rng.random_range(0..extreme.len())];
            lines[i] = lines[i]
                .split(' ')
                .map(|w| {
                    if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
                        n
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
        }
        4 => {
            let at = lines[i].floor_char_boundary(rng.random_range(0..=lines[i].len()));
            lines[i].truncate(at);
        }
        _ => {
            let junk: String = (0..rng.random_range(1..40))
                .map(|_| rng.random_range(0x20u8..0x7f) as char)
                .collect();
            lines.insert(i, format!("a={junk}"));
        }
    }
    lines.join("\r\n")
}

/// Damage to bytes: bits flipped, bytes and words set to edge values,
/// ranges inserted, removed or repeated, the end cut.
fn bytes(rng: &mut StdRng, mut b: Vec<u8>) -> Vec<u8> {
    let at = rng.random_range(0..=b.len());
    match rng.random_range(0..7) {
        0 if at < b.len() => b[at] ^= 1 << rng.random_range(0..8),
        1 if at < b.len() => b[at] = [0, 1, 0x7f, 0x80, 0xff][rng.random_range(0..5)],
        2 if at + 2 <= b.len() => {
            let v: u16 = [0, 1, 0x7fff, 0x8000, 0xffff][rng.random_range(0..5)];
            b[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
        3 => {
            let n = rng.random_range(1..32);
            b.splice(at..at, (0..n).map(|_| rng.random::<u8>()));
        }
        4 if at < b.len() => {
            let end = rng.random_range(at..=b.len());
            b.drain(at..end);
        }
        5 if at < b.len() => {
            let end = rng.random_range(at..=b.len().min(at + 64));
            let copy = b[at..end].to_vec();
            b.splice(at..at, copy);
        }
        _ => b.truncate(at),
    }
    b
}

// Counts keep each target within a few seconds in a release build (the
// SFU ones build an `Rtc` per input): about 10 s in all on two cores.

#[test]
fn sfu_datagram_survives_damaged_input() {
    run("sfu_datagram", Shape::Records, runs(3000));
}

#[test]
fn sdp_offer_survives_damaged_input() {
    run("sdp_offer", Shape::Sdp, runs(3000));
}

#[test]
fn turn_message_survives_damaged_input() {
    run("turn_message", Shape::Records, runs(5000));
}

#[test]
fn rfc4571_survives_damaged_input() {
    run("rfc4571", Shape::Bytes, runs(5000));
}

#[test]
fn peerjs_message_survives_damaged_input() {
    run("peerjs_message", Shape::Records, runs(5000));
}

#[test]
fn skyway_message_survives_damaged_input() {
    run("skyway_message", Shape::Records, runs(3000));
}

#[test]
fn chat_message_survives_damaged_input() {
    run("chat_message", Shape::Records, runs(5000));
}

#[test]
fn mediasoup_request_survives_damaged_input() {
    run("mediasoup_request", Shape::Records, runs(3000));
}

/// Every target has a test above (a new target must be added there).
#[test]
fn every_target_is_run() {
    let source = include_str!("tests.rs");
    for (name, _) in TARGETS {
        assert!(
            source.contains(&format!("run(\"{name}\"")),
            "{name} is not run"
        );
    }
}

/// Runs one input: `VESSEL_FUZZ_REPLAY=<target>:<file> cargo test --release
/// --lib replay -- --ignored` (a file a failure above wrote, or one of
/// `fuzz/out/<target>/default/crashes/`).
#[test]
#[ignore]
fn replay() {
    let what = std::env::var("VESSEL_FUZZ_REPLAY").expect("VESSEL_FUZZ_REPLAY=<target>:<file>");
    let (name, file) = what.split_once(':').expect("<target>:<file>");
    let target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a target")
        .1;
    target(&std::fs::read(file).expect("the input file"));
}

/// Writes the seeds to `fuzz/in/<target>/` (the corpus `fuzz/` starts
/// from): `cargo test --release --lib write_seed_corpus -- --ignored`.
#[test]
#[ignore]
fn write_seed_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/in");
    for (name, _) in TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, input) in seeds::of(name) {
            std::fs::write(dir.join(file), input).unwrap();
        }
    }
}
