// Simulcast scenarios shared by tests/browser/simulcast.test.mjs (asserts) and
// bench/simulcast.mjs (more samples, prints figures): a caster publishing three layers, viewers
// in this network namespace and one in a second namespace whose link is throttled or lossy.
// Everything is measured from WebRTC stats (getStats), never from sleeps.

import { Harness, rtcStats, waitFor, waitInPage } from './helpers.mjs';
import { HOST_IP, ViewerNetns, available, nftAvailable } from './netns.mjs';

export const PLAYER_PC = 'window.vesselPlayer && window.vesselPlayer.pc';
export const PUBLISHER_PC = 'window.vesselPublisher && window.vesselPublisher.pc';

/** Top / middle / lowest layer widths of a 1280×720 camera (rids f / h / q). */
export const TOP_WIDTH = 1280;
export const MID_WIDTH = 640;
export const LOW_WIDTH = 320;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const round = (x, digits = 0) => (x == null || Number.isNaN(x) ? null : Math.round(x * 10 ** digits) / 10 ** digits);

/**
 * Starts the server (bound to every address of this namespace, announcing 127.0.0.1 and, with
 * a viewer namespace, 10.77.0.1), Chromium, and — when possible — the viewer namespace with its
 * own Chromium. `env.ns` is null (and `env.nsReason` says why) when the namespace is unavailable.
 *
 * With the viewer namespace, TURN URLs name 10.77.0.1 (`--turn-public-addr`), the one address
 * of the server that viewers on both sides reach (127.0.0.1 is the viewer namespace's own
 * loopback); relays still use 127.0.0.1, the first announced media address. The server runs
 * with `--open`, since lives on a server reachable from other machines need stream keys.
 */
export async function startEnv({ wantNetns = true } = {}) {
  const reason = wantNetns ? await available() : 'not wanted';
  const env = { ns: null, nsBrowser: null, nsReason: reason === true ? null : reason, nftReason: null };
  const server =
    reason === true
      ? // --open: a server listening on 0.0.0.0 otherwise needs a stream key for every live.
        { bind: '0.0.0.0', publicIps: ['127.0.0.1', HOST_IP], extraArgs: ['--turn-public-addr', HOST_IP, '--open'] }
      : undefined;
  env.h = await Harness.start({ server });
  if (reason === true) {
    try {
      env.ns = await ViewerNetns.create((t) => env.h.note(t));
      env.nsBrowser = await env.h.launchBrowser(env.ns.chromium);
      const nft = await nftAvailable(env.ns);
      env.nftReason = nft === true ? null : nft;
    } catch (err) {
      env.nsReason = `viewer namespace unavailable: ${err.message}`;
      await env.ns?.close().catch(() => {});
      env.ns = null;
    }
  }
  if (env.nsReason) env.h.note(`no viewer namespace: ${env.nsReason}`);
  env.nsUrl = `http://${HOST_IP}:${env.h.server.httpPort}`;
  env.close = async () => {
    await env.ns?.unthrottle().catch(() => {});
    await env.ns?.removeLoss().catch(() => {});
    await env.h.close();
    await env.ns?.close().catch(() => {});
  };
  return env;
}

/**
 * Opens /cast/{live}, goes live and waits until the caster sends its layers. VP8 unless `query`
 * says otherwise: the layer tests and bench/simulcast.mjs were calibrated with VP8, and the cast
 * page now sends H.264 by default when the server packages LL-HLS.
 */
// The layer tests were calibrated with VP8; SIMULCAST_CODEC=H264 runs them with the codec the
// cast page sends when the server packages LL-HLS (BENCHMARKS.md, "H.264 simulcast").
const CODEC = process.env.SIMULCAST_CODEC || 'VP8';

export async function startCaster(h, live, { layers = 3, timeoutMs = 30000, query = `?codec=${CODEC}` } = {}) {
  const page = await h.open(`/cast/${live}${query}`, `cast ${live}`);
  await waitInPage(page, `!document.getElementById('golive').disabled`, 15000, 'camera ready (#golive enabled)');
  await page.click('#golive');
  await waitInPage(page, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'publisher state "live"');
  const sending = await casterLayers(page, { layers, timeoutMs });
  return { page, sending };
}

/**
 * Waits until the caster's outbound video has `layers` encodings, each with a rid, encoding
 * frames and its bytesSent rising. Returns them (lowest first).
 */
export async function casterLayers(page, { layers = 3, timeoutMs = 30000 } = {}) {
  let first = null;
  return waitFor(
    async () => {
      const s = (await rtcStats(page, PUBLISHER_PC))?.sent.video?.layers ?? [];
      if (!first || first.length !== s.length) {
        first = s;
        return false;
      }
      const rising = s.filter((l) => {
        const before = first.find((f) => f.rid === l.rid);
        return (layers === 1 || l.rid) && l.frameWidth > 0 && before && l.bytesSent > before.bytesSent;
      });
      return rising.length >= layers && s;
    },
    timeoutMs,
    `the caster sending ${layers} simulcast layers (outbound-rtp with rids, frames, bytes rising)`,
    1000,
  );
}

/**
 * Follows one page's received video: `sample()` reads getStats and returns
 * { t, width, height, framesDecoded, kbps (over the last `windowMs`), ... }.
 */
export class VideoMeter {
  constructor(page, pcExpr = PLAYER_PC, windowMs = 2000) {
    this.page = page;
    this.pcExpr = pcExpr;
    this.windowMs = windowMs;
    this.history = [];
  }

  async sample() {
    const s = await rtcStats(this.page, this.pcExpr);
    const v = s?.video;
    const now = Date.now();
    if (!v) return { t: now, width: 0, height: 0, framesDecoded: 0, kbps: 0, id: s?.id };
    if (this.history.length && this.history.at(-1).id !== s.id) this.history = [];
    this.history.push({ id: s.id, t: now, ts: v.timestamp, bytes: v.bytesReceived, frames: v.framesDecoded });
    while (this.history.length > 2 && this.history[1].ts <= v.timestamp - this.windowMs) this.history.shift();
    const old = this.history[0];
    const dt = (v.timestamp - old.ts) / 1000;
    return {
      ...v,
      id: s.id,
      t: now,
      width: v.frameWidth,
      height: v.frameHeight,
      kbps: dt > 0.5 ? ((v.bytesReceived - old.bytes) * 8) / dt / 1000 : null,
      fps: dt > 0.5 ? (v.framesDecoded - old.frames) / dt : null,
    };
  }
}

/** Opens a viewer of `live` and waits until it decodes `width`-wide frames. */
export async function openViewer(h, live, { name, browser, base, width = TOP_WIDTH, timeoutMs = 45000, query = '' } = {}) {
  const page = await h.open(`/play/${live}${query}`, name ?? `play ${live}`, { browser, base });
  const t0 = Date.now();
  const meter = new VideoMeter(page);
  const s = await waitFor(
    async () => {
      const v = await meter.sample();
      return (width ? v.width >= width : v.framesDecoded > 0) && v;
    },
    timeoutMs,
    `${name ?? 'viewer'} decoding ${width ? `${width}-wide frames` : 'frames'}`,
    250,
  );
  h.note(`${name ?? 'viewer'}: ${s.width}x${s.height} after ${Date.now() - t0} ms`);
  return { page, meter, startMs: Date.now() - t0 };
}

/**
 * Waits until every meter's page decodes `width`-wide frames continuously for `holdMs`
 * (a viewer joining makes the others' layers move for a while: start measuring after that).
 */
export async function waitStable(meters, { width = TOP_WIDTH, holdMs = 4000, timeoutMs = 40000 } = {}) {
  let since = null;
  return waitFor(
    async () => {
      const widths = [];
      for (const m of meters) widths.push((await m.sample()).width);
      if (!widths.every((w) => w >= width)) {
        since = null;
        return false;
      }
      since ??= Date.now();
      return Date.now() - since >= holdMs && widths;
    },
    timeoutMs,
    `every viewer at ${width} wide for ${holdMs} ms`,
    250,
  );
}

/**
 * Throttle → the throttled viewer settles on a lower layer; unthrottle → it returns to the top.
 * `watch`: meters of viewers that must stay at the top meanwhile.
 * Returns the times and what was received.
 */
export async function throttleScenario(h, ns, viewer, watch = [], { rate = '350kbit', settleMs = 4000, downTimeoutMs = 30000, upTimeoutMs = 45000 } = {}) {
  const out = { rate, downMs: null, settledMs: null, upMs: null, low: null, top: null, watchedMinWidth: null, timeline: [] };
  let watchedMin = Infinity;
  let watched = [];
  const watchAll = async () => {
    watched = [];
    for (const m of watch) {
      const v = await m.sample();
      watched.push(v.width);
      if (v.framesDecoded > 0) watchedMin = Math.min(watchedMin, v.width);
    }
  };
  const poll = async (t0, what, timeoutMs, cond) => {
    const deadline = t0 + timeoutMs;
    let last = null;
    for (;;) {
      last = await viewer.sample();
      await watchAll();
      out.timeline.push({ phase: what, ms: last.t - t0, width: last.width, kbps: round(last.kbps), watched });
      if (cond(last)) return last;
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last.width}x${last.height}, ${round(last.kbps)} kbps, ${last.framesDecoded} frames)`);
      }
      await sleep(200);
    }
  };
  try {
    const t0 = Date.now();
    await ns.throttle(rate);
    // 1. Lower layer decoded (the first frame narrower than the top).
    const first = await poll(t0, 'throttled: a lower layer decoded', downTimeoutMs, (v) => v.width > 0 && v.width <= MID_WIDTH);
    out.downMs = first.t - t0;
    // 2. Settled: a lower layer at a bitrate the link carries, playing smoothly (≥ 10 fps).
    const settled = await poll(t0, 'throttled: settled (≤ 640 wide, < 400 kbps, ≥ 10 fps)', downTimeoutMs, (v) => v.width <= MID_WIDTH && v.kbps != null && v.kbps < 400 && v.fps >= 10);
    out.settledMs = settled.t - t0;
    // 3. Stays there.
    const holdStart = Date.now();
    let maxWidth = 0;
    const framesAtHold = settled.framesDecoded;
    let last = settled;
    while (Date.now() - holdStart < settleMs) {
      await sleep(250);
      last = await viewer.sample();
      await watchAll();
      out.timeline.push({ phase: 'throttled: holding', ms: last.t - t0, width: last.width, kbps: round(last.kbps), watched });
      maxWidth = Math.max(maxWidth, last.width);
    }
    const heldS = (Date.now() - holdStart) / 1000;
    out.low = {
      width: last.width,
      height: last.height,
      kbps: round(last.kbps),
      fps: round(last.fps, 1),
      maxWidthWhileHeld: maxWidth,
      framesWhileHeld: last.framesDecoded - framesAtHold,
      fpsWhileHeld: round((last.framesDecoded - framesAtHold) / heldS, 1),
    };
    // 4. Unthrottle → top layer again.
    const t1 = Date.now();
    await ns.unthrottle();
    const up = await poll(t1, 'unthrottled: top layer decoded', upTimeoutMs, (v) => v.width >= TOP_WIDTH);
    out.upMs = up.t - t1;
    out.top = { width: up.width, height: up.height };
  } finally {
    await ns.unthrottle().catch(() => {});
    out.watchedMinWidth = watchedMin === Infinity ? null : watchedMin;
  }
  return out;
}

/**
 * `percent` % random loss on the viewer's incoming UDP for `seconds`: frames keep being decoded;
 * reports freezes, NACKs, retransmissions and losses over the period.
 */
export async function lossScenario(ns, viewer, { percent = 5, seconds = 20, windowS = 5 } = {}) {
  const s0 = await viewer.sample();
  const windows = [];
  let prevFrames = s0.framesDecoded;
  const widths = new Set();
  await ns.addLoss(percent);
  let s1 = s0;
  let dropped = null;
  try {
    const t0 = Date.now();
    let windowStart = t0;
    while (Date.now() - t0 < seconds * 1000) {
      await sleep(500);
      s1 = await viewer.sample();
      widths.add(s1.width);
      if (Date.now() - windowStart >= windowS * 1000) {
        windows.push(s1.framesDecoded - prevFrames);
        prevFrames = s1.framesDecoded;
        windowStart = Date.now();
      }
    }
    dropped = await ns.lossDropped();
  } finally {
    await ns.removeLoss();
  }
  const d = (k) => (s1[k] ?? 0) - (s0[k] ?? 0);
  const duration = (s1.timestamp - s0.timestamp) / 1000;
  const packets = d('packetsReceived');
  return {
    percent,
    durationS: round(duration, 1),
    framesDecoded: d('framesDecoded'),
    fps: round(d('framesDecoded') / duration, 1),
    framesPerWindow: windows,
    widths: [...widths].sort((a, b) => a - b),
    freezeCount: d('freezeCount'),
    totalFreezesDurationS: round(d('totalFreezesDuration'), 3),
    frozenRatio: round(d('totalFreezesDuration') / duration, 4),
    packetsReceived: packets,
    packetsLost: d('packetsLost'),
    nackCount: d('nackCount'),
    pliCount: d('pliCount'),
    retransmittedPacketsReceived: s1.retransmittedPacketsReceived == null ? null : d('retransmittedPacketsReceived'),
    droppedByRule: dropped,
    kbps: round(((s1.bytesReceived - s0.bytesReceived) * 8) / duration / 1000),
  };
}

/**
 * Join → first decoded frame, `samples` times: in a page of the server, `play()` (with
 * `options`) then poll getStats every 10 ms until framesDecoded > 0. The caster is already live.
 * `pauseMs` between joins (e.g. longer than an edge's relay lingers, for cold joins).
 */
export async function joinScenario(h, live, { samples = 3, options = {}, pauseMs = 0 } = {}) {
  const page = await h.open('/', `join ${live}`);
  await page.bringToFront();
  const results = [];
  for (let i = 0; i < samples; i++) {
    if (i > 0 && pauseMs) await new Promise((r) => setTimeout(r, pauseMs));
    const r = await page.evaluate(async ([live, options]) => {
      const { play } = await import('/vessel.js');
      const video = document.createElement('video');
      video.muted = true;
      video.autoplay = true;
      document.body.append(video);
      const t0 = performance.now();
      const player = play(live, { video, ...options });
      let connectedMs = null;
      let framesDecoded = 0;
      let width = 0;
      while (performance.now() - t0 < 15000) {
        const pc = player.pc;
        if (pc && connectedMs == null && pc.connectionState === 'connected') connectedMs = performance.now() - t0;
        if (pc) {
          for (const s of (await pc.getStats()).values()) {
            if (s.type === 'inbound-rtp' && s.kind === 'video') {
              framesDecoded = s.framesDecoded ?? 0;
              width = s.frameWidth ?? 0;
            }
          }
        }
        if (framesDecoded > 0) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      const firstFrameMs = framesDecoded > 0 ? performance.now() - t0 : null;
      await player.stop();
      video.remove();
      return { firstFrameMs, connectedMs, width, node: player.node };
    }, [live, options]);
    results.push({ firstFrameMs: round(r.firstFrameMs), connectedMs: round(r.connectedMs), width: r.width, node: r.node });
    h.note(`join #${i + 1}: ${JSON.stringify(r)}`);
  }
  await h.closePage(page);
  return results;
}

export function median(values) {
  const v = values.filter((x) => x != null).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}
