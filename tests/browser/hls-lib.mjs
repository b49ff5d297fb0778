// hls.js in a Vessel page, for the LL-HLS browser tests (hls.test.mjs) and bench/hls-latency.mjs.
// hls.js comes from tests/browser/node_modules (a devDependency; never served by Vessel): it is
// injected into whatever Vessel page is open, which gives it the server's origin (no CORS).

import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
/** hls.js's UMD build (defines `window.Hls`). */
export const HLS_JS = require.resolve('hls.js/dist/hls.min.js');

/**
 * Injects hls.js into `page` and plays `src` in a new muted `<video>` (640×360, on top of the
 * page), with `lowLatencyMode: true` and `config`. The page then has `window.hls`,
 * `window.hlsVideo` and `window.hlsRun`, which records (times in `performance.now()` ms):
 * every hls.js ERROR event, the fatal one, `waiting` and `seeking` events, the first `playing`
 * (and `currentTime` then), the tracks hls.js gave to Media Source Extensions, and every 250 ms
 * of playback `hls.latency` (s behind the playlist's live edge, the edge advanced by the
 * playlist's age), `hls.targetLatency`, the delay behind the wall clock by
 * EXT-X-PROGRAM-DATE-TIME (`Date.now() − hls.playingDate`, s) and the playback rate.
 */
export async function playHls(page, src, config = {}) {
  await page.addScriptTag({ path: HLS_JS });
  await page.evaluate(
    ({ src, config }) => {
      const Hls = window.Hls;
      const video = document.createElement('video');
      video.muted = true;
      video.autoplay = true;
      video.playsInline = true;
      video.style.cssText = 'position:fixed;left:0;top:0;width:640px;height:360px;z-index:9999;background:#000';
      document.body.appendChild(video);
      const now = () => performance.now();
      const run = {
        version: Hls.version,
        supported: Hls.isSupported(),
        errors: [],
        fatal: null,
        waiting: [],
        seeking: [],
        playingAt: null,
        startTime: null,
        tracks: null,
        levels: null,
        samples: [],
      };
      window.hlsRun = run;
      const hls = new Hls({ lowLatencyMode: true, ...config });
      window.hls = hls;
      window.hlsVideo = video;
      hls.on(Hls.Events.ERROR, (_event, d) => {
        const rec = {
          at: now(),
          type: d.type,
          details: d.details,
          fatal: !!d.fatal,
          reason: d.reason ?? d.error?.message ?? null,
          url: d.frag?.url ?? d.context?.url ?? null,
          currentTime: video.currentTime,
        };
        if (run.errors.length < 200) run.errors.push(rec);
        if (d.fatal && !run.fatal) run.fatal = rec;
      });
      hls.on(Hls.Events.BUFFER_CODECS, (_event, tracks) => {
        run.tracks = Object.fromEntries(Object.entries(tracks).map(([k, t]) => [k, { codec: t.codec, container: t.container }]));
      });
      hls.on(Hls.Events.MANIFEST_PARSED, (_event, d) => {
        run.levels = d.levels.map((l) => ({ width: l.width, height: l.height, videoCodec: l.videoCodec, audioCodec: l.audioCodec, bitrate: l.bitrate }));
        video.play().catch((err) => run.errors.push({ at: now(), type: 'play()', details: err.message, fatal: false }));
      });
      hls.on(Hls.Events.MEDIA_ATTACHED, () => hls.loadSource(src));
      video.addEventListener('waiting', () => run.waiting.push({ at: now(), currentTime: video.currentTime }));
      video.addEventListener('seeking', () => run.seeking.push({ at: now(), currentTime: video.currentTime }));
      video.addEventListener('playing', () => {
        if (run.playingAt == null) {
          run.playingAt = now();
          run.startTime = video.currentTime;
        }
      });
      hls.attachMedia(video);
      setInterval(() => {
        if (run.playingAt == null || video.paused || video.readyState < 3) return;
        const date = hls.playingDate;
        run.samples.push({
          at: now(),
          latency: hls.latency,
          target: hls.targetLatency,
          behindClock: date ? (Date.now() - date.getTime()) / 1000 : null,
          rate: video.playbackRate,
          buffer: hls.mainForwardBufferInfo?.len ?? null,
        });
      }, 250);
    },
    { src, config },
  );
}

const median = (values) => {
  const s = values.filter((v) => v != null && Number.isFinite(v)).sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : null;
};
const r3 = (v) => (v == null ? null : Math.round(v * 1000) / 1000);

/**
 * What the page's hls.js run looks like now: media seconds played since the first `playing`,
 * decoded / dropped frames, audio bytes decoded, errors, and the stalls (`waiting` events and
 * hls.js `bufferStalledError`s) from `graceMs` after the first `playing` on.
 */
export async function hlsState(page, graceMs = 1000) {
  const s = await page.evaluate(() => {
    const run = window.hlsRun;
    const video = window.hlsVideo;
    const q = video.getVideoPlaybackQuality();
    return {
      ...run,
      now: performance.now(),
      currentTime: video.currentTime,
      paused: video.paused,
      readyState: video.readyState,
      totalVideoFrames: q.totalVideoFrames,
      droppedVideoFrames: q.droppedVideoFrames,
      audioDecodedBytes: video.webkitAudioDecodedByteCount ?? null,
      videoDecodedBytes: video.webkitVideoDecodedByteCount ?? null,
      width: video.videoWidth,
      height: video.videoHeight,
    };
  });
  const after = s.playingAt == null ? Infinity : s.playingAt + graceMs;
  const stalls = s.errors.filter((e) => e.details === 'bufferStalledError');
  return {
    version: s.version,
    played: s.startTime == null ? 0 : s.currentTime - s.startTime,
    playingForMs: s.playingAt == null ? 0 : s.now - s.playingAt,
    currentTime: s.currentTime,
    paused: s.paused,
    readyState: s.readyState,
    size: `${s.width}x${s.height}`,
    totalVideoFrames: s.totalVideoFrames,
    droppedVideoFrames: s.droppedVideoFrames,
    audioDecodedBytes: s.audioDecodedBytes,
    videoDecodedBytes: s.videoDecodedBytes,
    tracks: s.tracks,
    levels: s.levels,
    fatal: s.fatal,
    errors: s.errors,
    waitingAfterGrace: s.waiting.filter((w) => w.at > after).length,
    stallsAfterGrace: stalls.filter((e) => e.at > after).length,
    waitingTotal: s.waiting.length,
    stallsTotal: stalls.length,
    seeks: s.seeking.length,
    latencyMedian: r3(median(s.samples.map((x) => x.latency))),
    targetLatencyMedian: r3(median(s.samples.map((x) => x.target))),
    behindClockMedian: r3(median(s.samples.map((x) => x.behindClock))),
    latencySamples: s.samples.length,
    maxRate: s.samples.reduce((m, x) => Math.max(m, x.rate), 1),
  };
}
