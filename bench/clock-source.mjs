// The RTMP clock-painting source of the latency benchmarks (bench/rtmp-latency.mjs,
// bench/hls-latency.mjs): raw 640×480 gray frames, 30 per second, each painted with the block
// pattern of /assets/latency-cast.html (the wall clock in ms and a frame counter; see
// web/latency-lib.js), piped into FFmpeg, which encodes (libx264 ultrafast, zerolatency, no
// B-frames, 900 kbit/s) and publishes over RTMP. A page reads the clock back out of each
// presented frame with web/latency-lib.js's readPattern: delay = its clock − the painted clock
// (one machine, one clock).

import { spawn } from 'node:child_process';

export const W = 640, H = 480, FPS = 30;
const COLS = 8, ROWS = 6;
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
export function paint(t, seq) {
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

/**
 * FFmpeg publishing the painted clock to `url` (a keyframe every `keyframeSeconds`); its output
 * goes to `h`'s log. Returns a stop function.
 */
export function rtmpSource(h, url, keyframeSeconds = 1) {
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
