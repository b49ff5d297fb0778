// Glass-to-glass latency benchmark: the page pair /assets/latency-cast.html (paints its clock as
// blocks on a canvas and sends it) and /assets/latency-play.html (reads the clock back out of
// each presented frame), as two pages of one headless Chromium, through Vessel (WHIP → SFU →
// WHEP, mode=sfu) and directly (the two pages' RTCPeerConnections signalled over a
// BroadcastChannel, mode=direct), rounds direct, sfu, direct, sfu (after one short uncounted
// warm-up round of each). Both paths send the same stream: one VP8 encoding (no simulcast),
// 640×480, ≤ 900 kbit/s, ≤ 30 fps, degradationPreference maintain-resolution, iceServers: [],
// the codecs and RTP header extensions Vessel negotiates. Prints tables and the JSON results.
//
//   scripts/bench-latency [samples]      (runs this inside a loopback-only netns; default 600)
//   LATENCY_QUERY='pace=raf' scripts/bench-latency 300   (more page parameters, both pages)
//   LATENCY_CLUSTER=1 scripts/bench-latency 300   (the relay hop: two `vessel --cluster` nodes on a
//     redis-server of its own; rounds sfu (both pages on node A, route=0) and edge (the play page
//     routed to node B, which relays the live from A), instead of direct and sfu)
//
// Both pages of a round share one browser context (BroadcastChannel is per storage partition)
// but not a window nor a renderer process: the cast page opens the play page as a popup
// (noopener). The browser is the harness's Chromium, launched with CHROMIUM_ARGS
// (tests/browser/helpers.mjs), which include --disable-background-timer-throttling
// --disable-renderer-backgrounding --disable-backgrounding-occluded-windows; the play page is
// brought to the front, and the table shows the rates both pages kept (paint fps on the cast
// page, presented fps on the play page).

import { Harness, waitInPage } from '../tests/browser/helpers.mjs';

const samples = Number(process.argv[2] || 600);
if (!(samples > 0)) throw new Error(`usage: node bench/latency.mjs [samples]`);
const cluster = process.env.LATENCY_CLUSTER === '1';
// A path is a page mode and, in a cluster, whether the play page may be routed to another node.
const paths = cluster
  ? { sfu: 'mode=sfu&route=0', edge: 'mode=sfu&route=1' }
  : { direct: 'mode=direct', sfu: 'mode=sfu' };
const [first, second] = Object.keys(paths);
const rounds = [first, second, first, second];
// More page parameters for both pages, e.g. LATENCY_QUERY='pace=raf&fps=60' (see /assets/latency.html).
const extra = process.env.LATENCY_QUERY ?? '';

/**
 * Opens the play page from the cast page, as a popup window without opener: the same browser
 * context (so the BroadcastChannel joins them), its own window (a tab behind another one in
 * the same window gets its rendering throttled to ~1 frame/s in headless Chromium, despite the
 * flags) and its own renderer process (noopener: a new browsing context group).
 */
async function openPlay(h, cast, pathname, name) {
  const [play] = await Promise.all([
    cast.context().waitForEvent('page'),
    cast.evaluate((url) => {
      window.open(url, '_blank', 'popup,noopener,width=960,height=600');
    }, pathname),
  ]);
  play.on('console', (m) => h.log.add(name, `console.${m.type()}: ${m.text()}`));
  play.on('pageerror', (e) => h.log.add(name, `pageerror: ${e.message}`));
  await play.waitForLoadState('domcontentloaded');
  return play;
}

/** One round: the pair of pages in `mode`, until the play page has measured `frames` frames. */
async function round(h, mode, frames, label) {
  const session = `${label}-${Math.random().toString(36).slice(2, 8)}`;
  const query = `?${paths[mode]}&session=${session}&samples=${frames}${extra ? `&${extra}` : ''}`;
  const cast = await h.open(`/assets/latency-cast.html${query}`, `${mode}-cast`);
  try {
    const play = await openPlay(h, cast, `/assets/latency-play.html${query}`, `${mode}-play`);
    await play.bringToFront();
    const r = await waitInPage(play, 'window.latencyResult', 60000 + frames * 200, `${mode} latency result`);
    r.mode = mode;
    // The edge path must really have crossed the relay (node B relaying the live from A).
    if (mode === 'edge' && !h.log.tail(20000).includes(`relay{live=latency-${session}}`)) {
      throw new Error(`round ${label}: no relay was opened for latency-${session}: the play page did not play from the edge`);
    }
    r.cast = await cast.evaluate(() => window.castStats());
    await cast.evaluate(() => window.castStop());
    return r;
  } finally {
    await h.closePage(cast); // closes both pages (one context)
  }
}

// Cluster mode: node A (the pages' server) takes no routed viewers; node B does.
const h = cluster ? await Harness.startCluster([0, 100], { secret: 'bench' }) : await Harness.start();
const results = [];
try {
  await h.diagnose(async () => {
    // Not counted: the browser's first pages and connections (processes, codecs, JIT).
    for (const mode of [first, second]) {
      const r = await round(h, mode, 60, 'warm');
      console.log(`warm-up ${mode}: median ${r.medianMs} ms (${r.samples} frames, not counted)`);
    }
    for (const [i, mode] of rounds.entries()) {
      const r = await round(h, mode, samples, `r${i + 1}`);
      r.round = i + 1;
      results.push(r);
      console.log(
        `${String(i + 1).padStart(2)} ${mode.padEnd(6)} median ${r.medianMs} ms  p95 ${r.p95Ms} ms  min ${r.minMs}  max ${r.maxMs}` +
          `  (${r.samples} frames, ${r.unreadable} unreadable)`,
      );
    }
  });
} finally {
  await h.close();
}

// ---- report ----
const fmt = (v) => (v == null ? '—' : `${v}`);
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
const pooled = (mode) => results.filter((r) => r.mode === mode).flatMap((r) => r.delays).sort((a, b) => a - b);
const row = (cells) => `| ${cells.join(' | ')} |`;

const name = (r) => ({ sfu: 'Vessel', direct: 'direct', edge: 'Vessel via an edge' })[r.mode];
console.log(`\nGlass-to-glass delay (ms), ${samples} frames per round after ${results[0]?.warmup} warm-up frames; paint ${results[0]?.pace}:\n`);
console.log(row(['round', 'path', 'median', 'p95', 'min', 'max', 'samples', 'unreadable']));
console.log(row(Array(8).fill('---')));
for (const r of results) {
  console.log(row([r.round, name(r), r.medianMs, r.p95Ms, r.minMs, r.maxMs, r.samples, `${r.unreadable} / ${r.samples + r.unreadable}`]));
}
console.log('\nWhere the time goes (medians, ms; requestVideoFrameCallback metadata and getStats):\n');
console.log(row(['round', 'path', 'to expectedDisplayTime', 'paint→received', 'received→presented', 'presented→callback', 'jitter buffer', 'decode', 'size', 'kbit/s', 'fps painted / presented', 'frames skipped', 'clock offset']));
console.log(row(Array(13).fill('---')));
for (const r of results) {
  const v = r.video ?? {};
  console.log(
    row([
      r.round, name(r), fmt(r.displayMedianMs), fmt(r.paintToReceiveMedianMs), fmt(r.receiveToPresentMedianMs),
      fmt(r.presentToCallbackMedianMs), fmt(v.jitterBufferMs), fmt(v.decodeMs), `${v.width}x${v.height} ${v.codec?.replace('video/', '')}`,
      fmt(v.receivedKbps), `${fmt(r.cast?.paintFps)} / ${fmt(r.presentedFps)}`, r.skippedFrames, fmt(r.clockOffsetMs),
    ]),
  );
}
const d = pooled(first), s = pooled(second);
const r1 = (v) => Math.round(v * 10) / 10;
const dm = r1(pct(d, 0.5)), sm = r1(pct(s, 0.5));
const [n1, n2] = [name({ mode: first }), name({ mode: second })];
console.log(`\nAll frames of each path: ${n1} median ${dm} ms, p95 ${r1(pct(d, 0.95))} ms (n = ${d.length}); ${n2} median ${sm} ms, p95 ${r1(pct(s, 0.95))} ms (n = ${s.length})`);
console.log(`${n2} median − ${n1} median: ${r1(sm - dm)} ms (ratio ${(sm / dm).toFixed(2)})`);
console.log(JSON.stringify(results.map(({ delays, ...r }) => r)));
