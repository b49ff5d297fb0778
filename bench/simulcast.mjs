// Simulcast benchmark: a caster publishes three layers (cast page, 1280×720 fake camera) and
// viewers in headless Chromium measure, from getStats:
//   - throttle: a viewer in a second network namespace is limited to 350 kbit/s (tc tbf on the
//     veth) → time until it decodes a lower layer, then the limit is lifted → time until it
//     decodes the top layer again; an unthrottled viewer meanwhile must stay on the top layer;
//   - loss: 5 % random loss on that viewer's incoming UDP (nft) → share of the time frozen
//     (freezeCount / totalFreezesDuration), NACKs, retransmissions, losses;
//   - join: play() → first decoded frame, with the caster already live.
// Prints a table and the JSON results.
//
//   cargo build --release
//   unshare --net bash -c "ip link set lo up && node bench/simulcast.mjs [--rounds 3] [--joins 10] [--loss-seconds 30]"
//
// Needs root (or an unprivileged user namespace: unshare --user --map-root-user --net), iproute2
// (ip, tc), nftables (nft), util-linux (unshare, nsenter), Debian's chromium and
// `npm ci --prefix tests/browser`. Refuses to run outside an isolated network namespace.

import { parseArgs } from 'node:util';
import { liveName } from '../tests/browser/helpers.mjs';
import {
  joinScenario,
  lossScenario,
  median,
  openViewer,
  startCaster,
  startEnv,
  throttleScenario,
  waitStable,
} from '../tests/browser/simulcast-lib.mjs';

const { values: opts } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    joins: { type: 'string', default: '10' },
    'loss-seconds': { type: 'string', default: '30' },
    'loss-percent': { type: 'string', default: '5' },
    rate: { type: 'string', default: '350kbit' },
  },
});
const rounds = Number(opts.rounds);
const joins = Number(opts.joins);
const lossSeconds = Number(opts['loss-seconds']);
const lossPercent = Number(opts['loss-percent']);

const env = await startEnv();
if (!env.ns) {
  console.error(`bench/simulcast: ${env.nsReason}`);
  await env.close();
  process.exit(2);
}
const { h } = env;
const results = { date: new Date().toISOString(), rate: opts.rate, throttle: [], loss: null, join: [] };
const log = (text) => {
  console.log(text);
  h.note(text);
};

try {
  const live = liveName('bench');
  const { sending } = await startCaster(h, live);
  results.casterLayers = sending.map((l) => ({ rid: l.rid, width: l.frameWidth, height: l.frameHeight }));
  log(`caster layers: ${sending.map((l) => `${l.rid} ${l.frameWidth}x${l.frameHeight}`).join(', ')}`);

  // 1. Join → first decoded frame (before other viewers, on an idle server).
  results.join = await joinScenario(h, live, { samples: joins });
  log(`join → first frame: ${results.join.map((j) => j.firstFrameMs).join(', ')} ms`);

  // 2. Throttle / unthrottle, `rounds` times with the same two viewers.
  const free = await openViewer(h, live, { name: 'unthrottled viewer' });
  const slow = await openViewer(h, live, { name: 'throttled viewer', browser: env.nsBrowser, base: env.nsUrl });
  await slow.page.bringToFront();
  for (let i = 0; i < rounds; i++) {
    await waitStable([free.meter, slow.meter], { timeoutMs: 60000 });
    try {
      const r = await throttleScenario(h, env.ns, slow.meter, [free.meter], { rate: opts.rate, upTimeoutMs: 60000 });
      results.throttle.push({ ...r, timeline: undefined });
      log(`throttle #${i + 1}: down ${r.downMs} ms (settled ${r.settledMs} ms at ${r.low.width}x${r.low.height}, ${r.low.kbps} kbps), up ${r.upMs} ms; unthrottled viewer min width ${r.watchedMinWidth}`);
    } catch (err) {
      results.throttle.push({ error: err.message });
      log(`throttle #${i + 1}: FAILED: ${err.message}`);
    }
  }
  await h.closePage(free.page);

  // 3. Loss on the same viewer (back at the top layer first).
  if (env.nftReason) {
    log(`loss: skipped: ${env.nftReason}`);
  } else {
    await waitStable([slow.meter], { timeoutMs: 60000 }).catch((err) => log(`loss: starting although ${err.message}`));
    results.loss = await lossScenario(env.ns, slow.meter, { percent: lossPercent, seconds: lossSeconds });
    log(`loss: ${JSON.stringify(results.loss)}`);
  }
  await h.closePage(slow.page);
} finally {
  await env.close();
}

// ---- report ----
const ok = results.throttle.filter((r) => !r.error);
const fmt = (v, unit = '') => (v == null ? '—' : `${v}${unit}`);
const row = (name, value) => console.log(`| ${name.padEnd(56)} | ${String(value)} |`);
console.log(`\n| ${'measure'.padEnd(56)} | result |`);
console.log(`|${'-'.repeat(58)}|--------|`);
row('join → first decoded frame, median (min–max)', `${fmt(median(results.join.map((j) => j.firstFrameMs)), ' ms')} (${Math.min(...results.join.map((j) => j.firstFrameMs ?? Infinity))}–${Math.max(...results.join.map((j) => j.firstFrameMs ?? 0))} ms, n=${results.join.length})`);
row(`throttle ${opts.rate} → lower layer decoded, median`, `${fmt(median(ok.map((r) => r.downMs)), ' ms')} (${ok.map((r) => r.downMs).join(', ')})`);
row(`throttle → settled (≤ 640 wide, < 400 kbps, ≥ 10 fps)`, `${fmt(median(ok.map((r) => r.settledMs)), ' ms')} (${ok.map((r) => r.settledMs).join(', ')})`);
row('throttled: settled layer / bitrate / fps', ok.map((r) => `${r.low.width}x${r.low.height} ${r.low.kbps} kbps ${r.low.fpsWhileHeld} fps`).join(', ') || '—');
row('unthrottle → top layer decoded, median', `${fmt(median(ok.map((r) => r.upMs)), ' ms')} (${ok.map((r) => r.upMs).join(', ')})`);
row('unthrottled viewer: lowest width meanwhile', ok.map((r) => r.watchedMinWidth).join(', ') || '—');
if (results.throttle.some((r) => r.error)) row('throttle rounds failed', results.throttle.filter((r) => r.error).length);
if (results.loss) {
  const l = results.loss;
  row(`${l.percent} % loss, ${l.durationS} s: time frozen`, `${(l.frozenRatio * 100).toFixed(2)} % (${l.freezeCount} freezes, ${l.totalFreezesDurationS} s)`);
  row('  decoded fps / received kbps / widths', `${l.fps} fps, ${l.kbps} kbps, ${l.widths.join('/')}`);
  row('  packets lost / received (dropped by the rule)', `${l.packetsLost} / ${l.packetsReceived} (${l.droppedByRule})`);
  row('  NACKs sent / retransmissions received / PLIs', `${l.nackCount} / ${l.retransmittedPacketsReceived} / ${l.pliCount}`);
}
console.log(`\n${JSON.stringify(results)}`);
