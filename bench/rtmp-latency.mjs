// Glass-to-glass latency of an RTMP live (an encoder as OBS would be, FFmpeg's libx264 with the
// zerolatency tune, 1 s keyframes, no B-frames) against a WHIP live (the cast page of the page
// pair), both to /assets/latency-play.html in headless Chromium through Vessel, in one run:
// rounds rtmp, whip, rtmp, whip.
//
// The RTMP source paints the same block pattern as /assets/latency-cast.html (the wall clock in
// ms and a frame counter; see web/latency-lib.js) into raw 640×480 frames, 30 per second, and
// pipes them into FFmpeg, which encodes (ultrafast, 900 kbit/s) and publishes over RTMP. The
// play page reads the clock back out of each presented frame: delay = its clock − the painted
// clock (one machine, one clock). Audio is left out: it does not change the video's delay.
//
//   scripts/bench-rtmp-latency [frames per round, default 300] [keyframe interval in s, default 1]
//
// With a long keyframe interval, a viewer starts from the kept group of pictures (src/sfu/gop.rs):
// the first frames it presents are that group's, older, before it catches up to the live edge.

import { spawn } from 'node:child_process';
import { Harness, waitInPage } from '../tests/browser/helpers.mjs';

const samples = Number(process.argv[2] || 300);
const keyframeSeconds = Number(process.argv[3] || 1);
const W = 640, H = 480, FPS = 30, COLS = 8, ROWS = 6;
const GUARDS = new Map([[0, 1], [COLS - 1, 0], [(ROWS - 1) * COLS, 0], [ROWS * COLS - 1, 1]]);
const DATA = [...Array(ROWS * COLS).keys()].filter((i) => !GUARDS.has(i));

function crc8(bits) {
  let crc = 0;
  for (const b of bits) {
    const top = ((crc >> 7) & 1) ^ b;
    crc = (crc << 1) & 0xff;
    if (top) crc ^= 0x07;
  }
  return crc;
}
const toBits = (v, n) => Array.from({ length: n }, (_, i) => Math.floor(v / 2 ** i) % 2);

/** One gray frame with clock `t` (ms) and counter `seq` painted as web/latency-lib.js does. */
function paint(t, seq) {
  const payload = [...toBits(Math.floor(t) % 2 ** 24, 24), ...toBits(seq % 2 ** 12, 12)];
  const bits = [...payload, ...toBits(crc8(payload), 8)];
  const cell = new Array(ROWS * COLS);
  for (const [i, v] of GUARDS) cell[i] = v;
  DATA.forEach((c, k) => (cell[c] = bits[k]));
  const frame = Buffer.alloc(W * H);
  const bw = W / COLS, bh = H / ROWS;
  for (let i = 0; i < cell.length; i++) {
    if (!cell[i]) continue;
    const x0 = Math.round((i % COLS) * bw), x1 = Math.round(((i % COLS) + 1) * bw);
    const y0 = Math.round(Math.floor(i / COLS) * bh), y1 = Math.round((Math.floor(i / COLS) + 1) * bh);
    for (let y = y0; y < y1; y++) frame.fill(255, y * W + x0, y * W + x1);
  }
  return frame;
}

/** FFmpeg publishing the painted clock to `url`; returns a stop function. */
function rtmpSource(h, url) {
  const ffmpeg = spawn('ffmpeg', [
    '-hide_banner', '-loglevel', 'error',
    '-f', 'rawvideo', '-pix_fmt', 'gray', '-s', `${W}x${H}`, '-r', String(FPS), '-i', '-',
    '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-pix_fmt', 'yuv420p',
    '-bf', '0', '-g', String(Math.round(FPS * keyframeSeconds)), '-b:v', '900k', '-maxrate', '900k', '-bufsize', '300k',
    '-an', '-flvflags', 'no_duration_filesize', '-f', 'flv', url,
  ], { stdio: ['pipe', 'ignore', 'pipe'] });
  ffmpeg.stderr.on('data', (d) => h.log.add('ffmpeg', d));
  ffmpeg.stdin.on('error', () => {});
  let seq = 0;
  const start = Date.now();
  let timer;
  const tick = () => {
    ffmpeg.stdin.write(paint(Date.now(), seq++));
    // Against the clock, not the previous tick: no drift.
    timer = setTimeout(tick, Math.max(0, start + (seq * 1000) / FPS - Date.now()));
  };
  tick();
  return () => {
    clearTimeout(timer);
    ffmpeg.stdin.end();
    ffmpeg.kill('SIGKILL');
  };
}

async function rtmpRound(h, rtmp, frames, label) {
  const session = `${label}-${Math.random().toString(36).slice(2, 8)}`;
  const stop = rtmpSource(h, `rtmp://${rtmp}/live/latency-${session}`);
  try {
    const play = await h.open(`/assets/latency-play.html?mode=sfu&session=${session}&samples=${frames}`, 'rtmp-play');
    await play.bringToFront();
    const r = await waitInPage(play, 'window.latencyResult', 60000 + frames * 200, 'rtmp latency result');
    await h.closePage(play);
    return r;
  } finally {
    stop();
  }
}

async function whipRound(h, frames, label) {
  const session = `${label}-${Math.random().toString(36).slice(2, 8)}`;
  const query = `?mode=sfu&session=${session}&samples=${frames}`;
  const cast = await h.open(`/assets/latency-cast.html${query}`, 'whip-cast');
  try {
    const [play] = await Promise.all([
      cast.context().waitForEvent('page'),
      cast.evaluate((url) => window.open(url, '_blank', 'popup,noopener,width=960,height=600'), `/assets/latency-play.html${query}`),
    ]);
    await play.waitForLoadState('domcontentloaded');
    await play.bringToFront();
    const r = await waitInPage(play, 'window.latencyResult', 60000 + frames * 200, 'whip latency result');
    await cast.evaluate(() => window.castStop());
    return r;
  } finally {
    await h.closePage(cast);
  }
}

const h = await Harness.start();
try {
  await h.diagnose(async () => {
    const rtmp = h.log.tail(4000).match(/RTMP on ([0-9.]+:[0-9]+)/)?.[1];
    if (!rtmp) throw new Error('no RTMP listener in the server log');
    await rtmpRound(h, rtmp, 60, 'warm');
    await whipRound(h, 60, 'warm');
    const rows = [];
    for (const [i, kind] of ['rtmp', 'whip', 'rtmp', 'whip'].entries()) {
      const r = kind === 'rtmp' ? await rtmpRound(h, rtmp, samples, `r${i}`) : await whipRound(h, samples, `r${i}`);
      rows.push({ kind, ...r });
      console.log(`${i + 1} ${kind.padEnd(5)} median ${r.medianMs} ms  p95 ${r.p95Ms} ms  min ${r.minMs}  max ${r.maxMs}  (${r.samples} frames, ${r.unreadable} unreadable, ${r.presentedFps} fps presented, receive ${r.paintToReceiveMedianMs} ms)`);
    }
    console.log(JSON.stringify(rows.map(({ delays, sdp, ...r }) => r)));
  });
} finally {
  await h.close();
}
