// Glass-to-glass latency of LL-HLS: an RTMP live (the clock-painting source of
// bench/rtmp-latency.mjs, bench/clock-source.mjs: FFmpeg's libx264 ultrafast with the zerolatency
// tune, no B-frames, 1 s keyframes, 640×480 at 30 fps) through Vessel to hls.js (1.7,
// tests/browser/node_modules, `lowLatencyMode: true`, otherwise its defaults) in headless
// Chromium, against the same source played over WebRTC (/assets/latency-play.html, as
// bench/rtmp-latency.mjs does), in one run: for each part duration (Vessel started with
// `--hls-part 0.5`, then `--hls-part 0.2`, its default; HLS_PARTS to choose), rounds hls, webrtc, hls, webrtc after an
// uncounted warm-up round of each.
//
// HLS rounds: hls.js is injected into a Vessel page (/) and plays /hls/{live}/index.m3u8 in a
// muted <video>; every frame the video presents (requestVideoFrameCallback) is drawn on a small
// canvas and web/latency-lib.js's readPattern reads the painted clock back: delay = the page's
// clock in the callback − the painted clock (one machine, one clock). The first `warmup` frames
// are not counted (hls.js starts PART-HOLD-BACK behind the edge and may speed up to reach its
// target latency). Stalls in the measured window: `waiting` events, hls.js bufferStalledError
// events, and freezes (two presented frames more than 200 ms apart). Also reported: hls.js's
// own `latency` (s behind the playlist's edge) and `targetLatency`, medians over the window.
//
//   [HLS_PARTS=0.5,0.33,0.2] scripts/bench-hls-latency [frames per round, default 600] [keyframe interval in s, default 1]

import { Harness, waitInPage } from '../tests/browser/helpers.mjs';
import { playHls } from '../tests/browser/hls-lib.mjs';
import { rtmpSource } from './clock-source.mjs';

const samples = Number(process.argv[2] || 600);
const keyframeSeconds = Number(process.argv[3] || 1);
if (!(samples > 0) || !(keyframeSeconds > 0)) throw new Error('usage: node bench/hls-latency.mjs [frames] [keyframe seconds]');
/** HLS frames presented before measuring starts (5 s). */
const HLS_WARMUP = 150;
/** Part durations to compare (env HLS_PARTS="0.5,0.33,0.2"), each a fresh Vessel. */
const PARTS = (process.env.HLS_PARTS || '0.5,0.2').split(',').map(Number);
if (PARTS.some((p) => !(p >= 0.1 && p <= 2))) throw new Error('HLS_PARTS: part durations in seconds, e.g. 0.5,0.2');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Measures `frames` frames of the hls.js video in `page` after `warmup` (runs in the page). */
async function measureInPage(page, frames, warmup) {
  await page.evaluate(
    async ({ frames, warmup }) => {
      const lib = await import('/assets/latency-lib.js');
      const video = window.hlsVideo;
      const probe = document.createElement('canvas');
      probe.width = lib.PROBE_WIDTH;
      probe.height = lib.PROBE_HEIGHT;
      const ctx = probe.getContext('2d', { willReadFrequently: true });
      const m = { delays: [], toDisplay: [], unreadable: 0, errors: {}, skipped: 0, seen: 0, gaps: [], from: null, to: null, done: false };
      window.hlsMeasure = m;
      let lastSeq = null, lastShown = null;
      const onFrame = (_now, meta) => {
        const shown = lib.clock();
        m.seen++;
        const measuring = m.seen > warmup;
        if (measuring && m.from == null) m.from = performance.now();
        if (measuring && lastShown != null) m.gaps.push(shown - lastShown);
        lastShown = shown;
        ctx.drawImage(video, 0, 0, lib.PROBE_WIDTH, lib.PROBE_HEIGHT);
        const got = lib.readPattern(ctx.getImageData(0, 0, lib.PROBE_WIDTH, lib.PROBE_HEIGHT).data, lib.PROBE_WIDTH, lib.PROBE_HEIGHT);
        if (got.error) {
          if (measuring) {
            m.unreadable++;
            m.errors[got.error] = (m.errors[got.error] ?? 0) + 1;
          }
        } else {
          if (lastSeq != null && measuring) m.skipped += (got.seq - lastSeq - 1 + lib.SEQ_MOD) % lib.SEQ_MOD;
          lastSeq = got.seq;
          let delay = (shown % lib.T_MOD) - got.t;
          if (delay < -lib.T_MOD / 2) delay += lib.T_MOD;
          if (measuring) {
            if (delay > -50 && delay < 20000) {
              m.delays.push(delay);
              if (meta.expectedDisplayTime) m.toDisplay.push(delay - (shown - (performance.timeOrigin + meta.expectedDisplayTime)));
            } else {
              m.unreadable++;
              m.errors['out of range'] = (m.errors['out of range'] ?? 0) + 1;
            }
          }
        }
        if (m.delays.length < frames) video.requestVideoFrameCallback(onFrame);
        else {
          m.to = performance.now();
          m.done = true;
        }
      };
      video.requestVideoFrameCallback(onFrame);
    },
    { frames, warmup },
  );
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
const r1 = (v) => (v == null || Number.isNaN(v) ? null : Math.round(v * 10) / 10);
const med = (a) => r1(pct([...a].filter((v) => v != null).sort((x, y) => x - y), 0.5));
/** ms → s, to the ms. */
const secs = (ms) => (ms == null ? null : Math.round(ms) / 1000);

async function hlsRound(h, rtmp, part, frames, warmup, label) {
  const live = `hls-${label.replace(/[^A-Za-z0-9_-]/g, '_')}-${Math.random().toString(36).slice(2, 8)}`;
  const stop = rtmpSource(h, `rtmp://${rtmp}/live/${live}`, keyframeSeconds);
  try {
    // The live is on air at the RTMP publish (a fraction of a second); the multivariant playlist
    // waits for the first keyframe.
    for (let i = 0; i < 100; i++) {
      if ((await (await fetch(`${h.url}/api/lives/${live}`)).json()).onAir) break;
      await sleep(100);
    }
    const page = await h.open('/', `hls ${label}`);
    await page.bringToFront();
    const opened = performance.now();
    await playHls(page, `${h.url}/hls/${live}/index.m3u8`);
    await measureInPage(page, frames, warmup);
    await waitInPage(page, 'window.hlsRun.playingAt != null || window.hlsRun.fatal', 30000, 'hls.js playing');
    const playing = performance.now();
    const done = await waitInPage(page, 'window.hlsMeasure.done || window.hlsRun.fatal', 60000 + frames * 200, `${label}: ${frames} frames measured`);
    const r = await page.evaluate(() => {
      const m = window.hlsMeasure, run = window.hlsRun, video = window.hlsVideo;
      const inWindow = (e) => m.from != null && e.at >= m.from && e.at <= (m.to ?? Infinity);
      const q = video.getVideoPlaybackQuality();
      return {
        fatal: run.fatal,
        m,
        waiting: run.waiting.filter(inWindow).length,
        stalledErrors: run.errors.filter((e) => e.details === 'bufferStalledError' && inWindow(e)).length,
        otherErrors: run.errors.filter((e) => e.details !== 'bufferStalledError').map((e) => e.details),
        seeks: run.seeking.filter(inWindow).length,
        samples: run.samples.filter(inWindow),
        dropped: q.droppedVideoFrames,
        total: q.totalVideoFrames,
        version: run.version,
      };
    });
    await h.closePage(page);
    if (r.fatal) throw new Error(`hls.js fatal error: ${JSON.stringify(r.fatal)}`);
    if (done !== true && !r.m.done) throw new Error('measuring did not finish');
    const s = [...r.m.delays].sort((a, b) => a - b);
    const freezes = r.m.gaps.filter((g) => g > 200);
    const measuredS = (r.m.to - r.m.from) / 1000;
    return {
      kind: `hls ${part}`,
      samples: s.length,
      unreadable: r.m.unreadable,
      medianMs: r1(pct(s, 0.5)), p95Ms: r1(pct(s, 0.95)), minMs: r1(s[0]), maxMs: r1(s[s.length - 1]),
      displayMedianMs: med(r.m.toDisplay),
      stalls: r.waiting + r.stalledErrors,
      waiting: r.waiting,
      bufferStalledErrors: r.stalledErrors,
      freezes: freezes.length,
      frozenMs: Math.round(freezes.reduce((a, b) => a + b, 0)),
      skippedFrames: r.m.skipped,
      seeks: r.seeks,
      presentedFps: r1(r.m.gaps.length / measuredS),
      hlsLatencyS: secs(med(r.samples.map((x) => x.latency * 1000))),
      hlsTargetLatencyS: secs(med(r.samples.map((x) => x.target * 1000))),
      behindPdtS: secs(med(r.samples.map((x) => x.behindClock * 1000))),
      maxRate: r.samples.reduce((a, x) => Math.max(a, x.rate), 1),
      toPlayingMs: Math.round(playing - opened),
      droppedFrames: r.dropped,
      otherErrors: r.otherErrors,
      hlsjs: r.version,
      delays: s,
    };
  } finally {
    stop();
  }
}

async function webrtcRound(h, rtmp, part, frames, label) {
  const session = `${label.replace(/[^A-Za-z0-9_-]/g, '_')}-${Math.random().toString(36).slice(2, 8)}`;
  const stop = rtmpSource(h, `rtmp://${rtmp}/live/latency-${session}`, keyframeSeconds);
  try {
    const play = await h.open(`/assets/latency-play.html?mode=sfu&session=${session}&samples=${frames}`, 'webrtc-play');
    await play.bringToFront();
    const r = await waitInPage(play, 'window.latencyResult', 60000 + frames * 200, 'webrtc latency result');
    await h.closePage(play);
    return {
      kind: `webrtc (${part})`,
      samples: r.samples, unreadable: r.unreadable,
      medianMs: r.medianMs, p95Ms: r.p95Ms, minMs: r.minMs, maxMs: r.maxMs,
      displayMedianMs: r.displayMedianMs,
      // getStats freezeCount / totalFreezesDuration: the whole connection, start included.
      freezes: r.video?.freezeCount ?? null,
      frozenMs: r.video?.totalFreezesDuration != null ? Math.round(r.video.totalFreezesDuration * 1000) : null,
      skippedFrames: r.skippedFrames,
      presentedFps: r.presentedFps,
      delays: r.delays,
    };
  } finally {
    stop();
  }
}

const rows = [];
for (const part of PARTS) {
  const h = await Harness.start({ server: { extraArgs: ['--hls-part', String(part)] } });
  try {
    await h.diagnose(async () => {
      const rtmp = await h.rtmpAddress();
      const warm = await hlsRound(h, rtmp, part, 60, 60, `warm${part}`);
      console.log(`warm-up hls ${part}: median ${warm.medianMs} ms (${warm.samples} frames, not counted)`);
      await webrtcRound(h, rtmp, part, 60, `warm${part}`);
      for (const [i, kind] of ['hls', 'webrtc', 'hls', 'webrtc'].entries()) {
        const label = `p${part}r${i}`;
        const r = kind === 'hls' ? await hlsRound(h, rtmp, part, samples, HLS_WARMUP, label) : await webrtcRound(h, rtmp, part, samples, label);
        r.part = part;
        rows.push(r);
        console.log(
          `${r.kind.padEnd(13)} median ${r.medianMs} ms  p95 ${r.p95Ms} ms  min ${r.minMs}  max ${r.maxMs}  (${r.samples} frames, ${r.unreadable} unreadable, ` +
            `${r.presentedFps} fps, freezes ${r.freezes} / ${r.frozenMs} ms` +
            (kind === 'hls' ? `, stalls ${r.stalls} (waiting ${r.waiting}, bufferStalledError ${r.bufferStalledErrors}), hls.latency ${r.hlsLatencyS} s, target ${r.hlsTargetLatencyS} s, behind PDT ${r.behindPdtS} s, to playing ${r.toPlayingMs} ms, max rate ${r.maxRate})` : ')'),
        );
      }
    });
  } finally {
    await h.close();
  }
}

const row = (cells) => `| ${cells.join(' | ')} |`;
const fmt = (v) => (v == null ? '—' : `${v}`);
console.log(`\nGlass-to-glass delay (ms), RTMP (libx264 zerolatency, ${keyframeSeconds} s keyframes) → Vessel → Chromium; ${samples} frames a round (HLS after ${HLS_WARMUP} warm-up frames):\n`);
console.log(row(['path', 'median', 'p95', 'min', 'max', 'frames', 'unreadable', 'stalls (waiting + bufferStalledError)', 'freezes (HLS: > 200 ms in the window; WebRTC: freezeCount, whole connection)', 'hls.latency / target (s)', 'behind PDT (s)']));
console.log(row(Array(11).fill('---')));
for (const r of rows) {
  const hls = r.kind.startsWith('hls');
  console.log(row([
    r.kind, r.medianMs, r.p95Ms, r.minMs, r.maxMs, r.samples, r.unreadable,
    hls ? `${r.stalls} (${r.waiting} + ${r.bufferStalledErrors})` : '—',
    `${fmt(r.freezes)} (${fmt(r.frozenMs)} ms)`,
    hls ? `${r.hlsLatencyS} / ${r.hlsTargetLatencyS}` : '—',
    hls ? fmt(r.behindPdtS) : '—',
  ]));
}
const pooled = (kind) => rows.filter((r) => r.kind === kind).flatMap((r) => r.delays).sort((a, b) => a - b);
console.log('');
for (const kind of [...new Set(rows.map((r) => r.kind))]) {
  const d = pooled(kind);
  console.log(`all frames, ${kind}: median ${r1(pct(d, 0.5))} ms, p95 ${r1(pct(d, 0.95))} ms (n = ${d.length})`);
}
console.log(JSON.stringify(rows.map(({ delays, ...r }) => r)));
