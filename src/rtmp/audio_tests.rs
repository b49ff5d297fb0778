//! Tests of [`AacToOpus`] on small AAC fixtures (made with ffmpeg, see
//! testdata/README.md), decoding the Opus back with mousiki's decoder; and
//! the quality/CPU measurement against ffmpeg's libopus (`--ignored`).

use bytes::Bytes;
use mousiki::{Channels, Decoder};
use rand::{Rng, SeedableRng};

use super::*;
use crate::rtmp::flv::parse_aac_config;

const SINE_44K1: &[u8] = include_bytes!("testdata/sine440_44k1_stereo.aac");
const SINE_48K_MONO: &[u8] = include_bytes!("testdata/sine1k_48k_mono.aac");

/// Splits an ADTS stream into raw AAC frames and builds the
/// AudioSpecificConfig an FLV sequence header would carry.
pub(crate) fn adts_frames(data: &[u8]) -> (AacConfig, Vec<Bytes>) {
    let mut frames = Vec::new();
    let mut asc = None;
    let mut pos = 0;
    while pos + 7 <= data.len() {
        let h = &data[pos..pos + 7];
        assert_eq!((h[0], h[1] & 0xf0), (0xff, 0xf0), "ADTS sync at {pos}");
        let header_len = if h[1] & 1 == 1 { 7 } else { 9 };
        let profile = (h[2] >> 6) + 1;
        let sf = (h[2] >> 2) & 0x0f;
        let ch = ((h[2] & 1) << 2) | (h[3] >> 6);
        let len = (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
        asc.get_or_insert([(profile << 3) | (sf >> 1), ((sf & 1) << 7) | (ch << 3)]);
        frames.push(Bytes::copy_from_slice(&data[pos + header_len..pos + len]));
        pos += len;
    }
    let config = parse_aac_config(&Bytes::copy_from_slice(&asc.expect("no ADTS frame"))).unwrap();
    (config, frames)
}

/// Decodes Opus frames to 48 kHz stereo interleaved f32.
pub(crate) fn decode_opus(frames: &[OpusFrame]) -> Vec<f32> {
    let mut dec = Decoder::new(OPUS_RATE, Channels::Stereo).unwrap();
    let mut pcm = vec![0f32; FRAME_SAMPLES * 2 * 6];
    let mut out = Vec::new();
    for f in frames {
        let n = dec.decode_float(&f.payload, &mut pcm, false).unwrap();
        out.extend_from_slice(&pcm[..n * 2]);
    }
    out
}

/// Transcodes all frames with RTMP-style ms timestamps.
fn transcode(config: &AacConfig, frames: &[Bytes], bitrate: u32) -> Vec<OpusFrame> {
    let mut t = AacToOpus::new(config, bitrate, 1234).unwrap();
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let ms = (i as u64 * 1024 * 1000 / u64::from(config.sample_rate)) as u32;
        out.extend(t.push(f, ms).unwrap());
    }
    out
}

/// Frequency from zero crossings of the left channel, skipping the start.
fn tone_hz(stereo: &[f32]) -> f64 {
    let left: Vec<f32> = stereo.iter().step_by(2).copied().skip(4800).collect();
    let crossings = left
        .windows(2)
        .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
        .count();
    crossings as f64 * f64::from(OPUS_RATE) / left.len() as f64
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[test]
fn aac_44k1_stereo_to_opus_keeps_the_tone() {
    let (config, frames) = adts_frames(SINE_44K1);
    assert_eq!((config.sample_rate, config.channels), (44100, 2));
    let out = transcode(&config, &frames, DEFAULT_BITRATE);
    // ~1 s of 1024-sample frames at 44.1 kHz -> ~50 Opus frames of 20 ms.
    let expected = frames.len() * 1024 * 48000 / 44100 / FRAME_SAMPLES;
    assert!(
        out.len() + 2 >= expected && out.len() <= expected,
        "{} vs {expected}",
        out.len()
    );
    for (i, f) in out.iter().enumerate() {
        assert_eq!(f.rtp_ts, 1234 + (i * FRAME_SAMPLES) as u32);
        assert!(f.payload.len() <= MAX_OPUS_PACKET);
    }
    let pcm = decode_opus(&out);
    let hz = tone_hz(&pcm);
    assert!((hz - 440.0).abs() < 3.0, "tone {hz} Hz");
    // ffmpeg's sine is 1/8 full scale, up-mixed to stereo at -3 dB: RMS
    // 0.125 / sqrt(2) * 0.707 = 0.0625 (ffmpeg's volumedetect on the fixture
    // says -24.3 dB = 0.061 including the silent edges).
    let level = rms(&pcm[9600..pcm.len() - 9600]);
    assert!((level - 0.0625).abs() < 0.006, "rms {level}");
}

#[test]
fn aac_48k_mono_passes_rate_and_upmixes() {
    let (config, frames) = adts_frames(SINE_48K_MONO);
    assert_eq!((config.sample_rate, config.channels), (48000, 1));
    let out = transcode(&config, &frames, 64_000);
    let expected = frames.len() * 1024 / FRAME_SAMPLES;
    assert!(out.len() + 1 >= expected && out.len() <= expected);
    let pcm = decode_opus(&out);
    assert!((tone_hz(&pcm) - 1000.0).abs() < 5.0);
    // Up-mixed: both channels carry the tone.
    let (l, r): (Vec<f32>, Vec<f32>) = pcm[9600..].chunks(2).map(|c| (c[0], c[1])).unzip();
    assert!((rms(&l) - rms(&r)).abs() < 0.01 && rms(&l) > 0.05);
}

#[test]
fn rtmp_gap_moves_rtp_time_forward() {
    let (config, frames) = adts_frames(SINE_48K_MONO);
    let mut t = AacToOpus::new(&config, DEFAULT_BITRATE, 0).unwrap();
    let mut out = Vec::new();
    for (i, f) in frames.iter().take(10).enumerate() {
        out.extend(t.push(f, i as u32 * 21).unwrap()); // 21.33 ms each
    }
    let before = out.len();
    let last_ts = out.last().unwrap().rtp_ts;
    // 10 frames = 213 ms; the next arrives 500 ms late.
    out.extend(t.push(&frames[10], 213 + 500).unwrap());
    // The partial frame was finished with silence, then time jumped.
    let pad_frame = &out[before];
    assert_eq!(pad_frame.rtp_ts, last_ts + FRAME_SAMPLES as u32);
    let next = &out[before + 1];
    let jump = next.rtp_ts - pad_frame.rtp_ts - FRAME_SAMPLES as u32;
    // 500 ms = 24000 samples, minus the silence that padded the frame.
    assert!((23_000..=24_000).contains(&jump), "jump {jump}");
    // Small jitter (RTMP ms rounding) does not re-anchor.
    let mut t = AacToOpus::new(&config, DEFAULT_BITRATE, 0).unwrap();
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let jitter = if i % 2 == 0 { 30 } else { 0 };
        out.extend(t.push(f, i as u32 * 21 + jitter).unwrap());
    }
    for w in out.windows(2) {
        assert_eq!(w[1].rtp_ts - w[0].rtp_ts, FRAME_SAMPLES as u32);
    }
}

#[test]
fn refuses_he_aac_and_surround() {
    let mut c = adts_frames(SINE_44K1).0;
    c.object_type = 5;
    assert_eq!(
        AacToOpus::new(&c, DEFAULT_BITRATE, 0).err(),
        Some(AudioError::UnsupportedProfile(5))
    );
    let mut c = adts_frames(SINE_44K1).0;
    c.channels = 6;
    assert_eq!(
        AacToOpus::new(&c, DEFAULT_BITRATE, 0).err(),
        Some(AudioError::UnsupportedChannels(6))
    );
}

#[test]
fn random_aac_frames_are_errors_not_panics() {
    let (config, frames) = adts_frames(SINE_44K1);
    let mut t = AacToOpus::new(&config, DEFAULT_BITRATE, 0).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut errors = 0;
    for i in 0..3000u32 {
        let mut f: Vec<u8> = if rng.random_bool(0.5) {
            frames[rng.random_range(0..frames.len())].to_vec()
        } else {
            (0..rng.random_range(0..800))
                .map(|_| rng.random())
                .collect()
        };
        for _ in 0..rng.random_range(0..6) {
            if !f.is_empty() {
                let at = rng.random_range(0..f.len());
                f[at] = rng.random();
            }
        }
        if t.push(&f, i * 23).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0);
    // Still usable afterwards.
    assert!(t.push(&frames[5], 3000 * 23).is_ok());
}

// ---- Quality and CPU measurement (run: cargo test --release --lib
// rtmp::audio::tests::opus_quality -- --ignored --nocapture) ----

fn sh(cmd: &str) {
    let ok = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "failed: {cmd}");
}

fn read_f32le(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Mono mix of interleaved stereo.
fn mono(x: &[f32]) -> Vec<f32> {
    x.chunks(2)
        .map(|c| 0.5 * (c[0] + c.get(1).copied().unwrap_or(0.0)))
        .collect()
}

/// Lag (samples) of `y` behind `x` maximizing cross-correlation over 1 s.
fn best_lag(x: &[f32], y: &[f32]) -> isize {
    let (start, len, max_lag) = (48_000usize, 48_000usize, 4_800isize);
    let mut best = (f64::MIN, 0);
    for lag in -max_lag..=max_lag {
        let mut acc = 0f64;
        for i in start..start + len {
            let j = i as isize + lag;
            if let (Some(a), Some(b)) = (x.get(i), usize::try_from(j).ok().and_then(|j| y.get(j))) {
                acc += f64::from(*a) * f64::from(*b);
            }
        }
        if acc > best.0 {
            best = (acc, lag);
        }
    }
    best.1
}

/// SNR (dB) of `y` against reference `x` after delay alignment, over
/// both channels, skipping 0.5 s at each end.
fn snr_db(x: &[f32], y: &[f32]) -> f64 {
    let lag = best_lag(&mono(x), &mono(y));
    let frames = x.len() / 2;
    let (mut sig, mut noise) = (0f64, 0f64);
    for i in 24_000..frames.saturating_sub(24_000) {
        let j = i as isize + lag;
        let Some(j) = usize::try_from(j).ok().filter(|j| j * 2 + 1 < y.len()) else {
            continue;
        };
        for c in 0..2 {
            let a = f64::from(x[i * 2 + c]);
            let b = f64::from(y[j * 2 + c]);
            sig += a * a;
            noise += (a - b) * (a - b);
        }
    }
    10.0 * (sig / noise.max(1e-20)).log10()
}

/// Writes Opus frames as Ogg and decodes them with ffmpeg to 48 kHz f32.
fn ffmpeg_decode(dir: &std::path::Path, stem: &str, frames: &[OpusFrame]) -> Vec<f32> {
    let ogg = dir.join(format!("{stem}.opus"));
    std::fs::write(&ogg, ogg_opus(frames)).unwrap();
    let pcm = dir.join(format!("{stem}.f32"));
    sh(&format!(
        "ffmpeg -hide_banner -loglevel error -y -i {} -ar 48000 -ac 2 -f f32le {}",
        ogg.display(),
        pcm.display()
    ));
    read_f32le(&pcm)
}

/// The Opus encoders alone on the 48 kHz source (no AAC), both decoded by
/// ffmpeg: mousiki at `bitrate` vs libopus at `bitrate`.
fn encoders_alone(
    dir: &std::path::Path,
    name: &str,
    reference: &[f32],
    bitrate: u32,
) -> (f64, f64, f64) {
    let mut enc = Encoder::builder(OPUS_RATE, Channels::Stereo, Application::Audio)
        .bitrate(Bitrate::Bits(bitrate as i32))
        .build()
        .unwrap();
    let mut pkt = vec![0u8; MAX_OPUS_PACKET];
    let started = std::time::Instant::now();
    let frames: Vec<OpusFrame> = reference
        .chunks_exact(FRAME_SAMPLES * 2)
        .enumerate()
        .map(|(i, c)| {
            let n = enc.encode_float(c, &mut pkt).unwrap();
            OpusFrame {
                payload: Bytes::copy_from_slice(&pkt[..n]),
                rtp_ts: (i * FRAME_SAMPLES) as u32,
            }
        })
        .collect();
    let ms_per_s =
        started.elapsed().as_secs_f64() * 1000.0 / (reference.len() / 2) as f64 * 48_000.0;
    let ours = ffmpeg_decode(dir, &format!("{name}_enc_ours"), &frames);
    let d = dir.display();
    sh(&format!(
        "ffmpeg -hide_banner -loglevel error -y -f f32le -ar 48000 -ac 2 -i {d}/{name}.f32 \
         -c:a libopus -b:a {bitrate} -frame_duration 20 {d}/{name}_enc_lib.opus && \
         ffmpeg -hide_banner -loglevel error -y -i {d}/{name}_enc_lib.opus -ar 48000 -ac 2 \
         -f f32le {d}/{name}_enc_lib.f32"
    ));
    let lib = read_f32le(&dir.join(format!("{name}_enc_lib.f32")));
    (snr_db(reference, &ours), snr_db(reference, &lib), ms_per_s)
}

#[test]
#[ignore = "measurement: needs ffmpeg (libopus) and espeak-ng; prints figures"]
fn opus_quality_vs_libopus() {
    let dir = std::env::temp_dir().join("vessel-opus-quality");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let q = "-hide_banner -loglevel error -y";
    // Sources: 10 s, 48 kHz stereo f32.
    sh(&format!(
        "espeak-ng -s 150 -w {d}/speech_raw.wav 'The quick brown fox jumps over the lazy dog. \
         Live streaming servers turn one publisher into many viewers, and every extra \
         millisecond of delay is felt in the chat. Audio is transcoded from AAC to Opus.' \
         && ffmpeg {q} -i {d}/speech_raw.wav -af 'apad=whole_dur=10' -t 10 -ar 48000 -ac 2 \
         -f f32le {d}/speech.f32"
    ));
    sh(&format!(
        "ffmpeg {q} -f lavfi -i \"aevalsrc=0.25*sin(2*PI*220*t)+0.15*sin(2*PI*331*t)*sin(2*PI*0.5*t)\
         +0.08*sin(2*PI*1760*t)+0.04*sin(2*PI*5274*t)|0.25*sin(2*PI*277*t)+0.15*sin(2*PI*440*t)\
         +0.08*sin(2*PI*2217*t)*sin(2*PI*3*t):s=48000:d=10\" -f lavfi \
         -i 'anoisesrc=color=pink:amplitude=0.05:sample_rate=48000:d=10' \
         -filter_complex '[1]aformat=channel_layouts=stereo[n];[0][n]amix=inputs=2:normalize=0' \
         -ar 48000 -ac 2 -f f32le {d}/music.f32"
    ));
    println!("Opus encoders alone, 48 kHz stereo source, decoded by ffmpeg:");
    println!(
        "| signal | bitrate | mousiki | libopus (ffmpeg) | mousiki encode CPU (ms per audio s) |"
    );
    println!("|---|---|---|---|---|");
    for name in ["speech", "music"] {
        let reference = read_f32le(&dir.join(format!("{name}.f32")));
        for bitrate in [64_000, 128_000] {
            let (ours, lib, cpu) = encoders_alone(&dir, name, &reference, bitrate);
            println!(
                "| {name} | {} k | {ours:.1} dB | {lib:.1} dB | {cpu:.2} |",
                bitrate / 1000
            );
        }
    }
    println!();
    println!("Full transcode, AAC 160 kbit/s -> Opus 128 kbit/s, SNR vs the source:");
    println!(
        "| signal | AAC rate | AAC only (ceiling) | ours: AAC->mousiki Opus | ffmpeg: AAC->libopus | CPU ours (ms per audio s) |"
    );
    println!("|---|---|---|---|---|---|");
    for name in ["speech", "music"] {
        let reference = read_f32le(&dir.join(format!("{name}.f32")));
        for rate in [44_100, 48_000] {
            // The publisher's AAC (what OBS/FFmpeg would send), 160 kbit/s.
            sh(&format!(
                "ffmpeg {q} -f f32le -ar 48000 -ac 2 -i {d}/{name}.f32 -ar {rate} -c:a aac \
                 -b:a 160k -f adts {d}/{name}_{rate}.aac"
            ));
            // AAC decoded by ffmpeg, back at 48 kHz: the best any transcoder can do.
            sh(&format!(
                "ffmpeg {q} -i {d}/{name}_{rate}.aac -ar 48000 -ac 2 -f f32le {d}/{name}_{rate}_aac.f32"
            ));
            // ffmpeg's libopus at the same bitrate, decoded back.
            sh(&format!(
                "ffmpeg {q} -i {d}/{name}_{rate}.aac -ar 48000 -c:a libopus -b:a 128k \
                 -frame_duration 20 {d}/{name}_{rate}.opus && ffmpeg {q} -i {d}/{name}_{rate}.opus \
                 -ar 48000 -ac 2 -f f32le {d}/{name}_{rate}_libopus.f32"
            ));
            let aac = std::fs::read(dir.join(format!("{name}_{rate}.aac"))).unwrap();
            let (config, frames) = adts_frames(&aac);
            let started = std::time::Instant::now();
            let ours = transcode(&config, &frames, DEFAULT_BITRATE);
            let cpu = started.elapsed();
            let audio_s = frames.len() as f64 * 1024.0 / f64::from(rate);
            // Decoded by ffmpeg, like libopus's output: mousiki 0.2.1's own
            // *decoder* scores ~12 dB on these signals, far below libopus's
            // decoder on the same packets (see BENCHMARKS.md ("RTMP ingest")).
            let ours_pcm = ffmpeg_decode(&dir, &format!("{name}_{rate}_ours"), &ours);
            let aac_only = read_f32le(&dir.join(format!("{name}_{rate}_aac.f32")));
            let libopus = read_f32le(&dir.join(format!("{name}_{rate}_libopus.f32")));
            println!(
                "| {name} | {rate} | {:.1} dB | {:.1} dB | {:.1} dB | {:.2} |",
                snr_db(&reference, &aac_only),
                snr_db(&reference, &ours_pcm),
                snr_db(&reference, &libopus),
                cpu.as_secs_f64() * 1000.0 / audio_s,
            );
        }
    }
}

/// Ogg CRC-32 (polynomial 0x04c11db7, no reflection), RFC 3533.
fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for b in data {
        crc ^= u32::from(*b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn ogg_page(out: &mut Vec<u8>, packet: &[u8], granule: u64, seq: u32, flags: u8) {
    let mut lacing = vec![255u8; packet.len() / 255];
    lacing.push((packet.len() % 255) as u8);
    let start = out.len();
    out.extend_from_slice(b"OggS");
    out.extend([0, flags]);
    out.extend(granule.to_le_bytes());
    out.extend(0x5645_5353u32.to_le_bytes()); // serial
    out.extend(seq.to_le_bytes());
    out.extend([0; 4]); // crc, filled below
    out.push(lacing.len() as u8);
    out.extend(lacing);
    out.extend_from_slice(packet);
    let crc = ogg_crc(&out[start..]);
    out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
}

/// Ogg Opus file (RFC 7845) of 20 ms stereo frames, for ffmpeg to decode.
pub(crate) fn ogg_opus(frames: &[OpusFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut head = b"OpusHead".to_vec();
    head.extend([1, 2]);
    head.extend(312u16.to_le_bytes()); // pre-skip: the encoder's lookahead
    head.extend(48_000u32.to_le_bytes());
    head.extend([0, 0, 0]);
    ogg_page(&mut out, &head, 0, 0, 2);
    let mut tags = b"OpusTags".to_vec();
    tags.extend(6u32.to_le_bytes());
    tags.extend(b"vessel");
    tags.extend(0u32.to_le_bytes());
    ogg_page(&mut out, &tags, 0, 1, 0);
    for (i, f) in frames.iter().enumerate() {
        let last = i + 1 == frames.len();
        let granule = (i as u64 + 1) * FRAME_SAMPLES as u64;
        ogg_page(
            &mut out,
            &f.payload,
            granule,
            i as u32 + 2,
            if last { 4 } else { 0 },
        );
    }
    out
}
