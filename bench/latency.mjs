// Glass-to-glass latency benchmark: /assets/latency.html in headless Chromium,
// through Vessel (WHIP → SFU → WHEP) and over a direct RTCPeerConnection pair,
// in one run. Prints a table and the JSON results.
//
//   scripts/bench-latency [samples]      (runs this inside a loopback-only netns)

import { Harness, waitInPage } from '../tests/browser/helpers.mjs';

const samples = Number(process.argv[2] || 600);
const rounds = ['direct', 'sfu', 'direct', 'sfu'];

const h = await Harness.start();
const results = [];
try {
  for (const mode of rounds) {
    const page = await h.open(`/assets/latency.html?mode=${mode}&samples=${samples}`, mode);
    await page.bringToFront();
    const r = await waitInPage(page, 'window.latencyResult', 120000, `${mode} latency result`);
    results.push(r);
    console.log(`${mode.padEnd(6)} median ${r.medianMs} ms  p95 ${r.p95Ms} ms  min ${r.minMs}  max ${r.maxMs}  (${r.samples} frames, ${r.decodeErrors} unreadable)`);
    await h.closePage(page);
  }
} finally {
  await h.close();
}
const med = (mode) => {
  const v = results.filter((r) => r.mode === mode).map((r) => r.medianMs).sort((a, b) => a - b);
  return v[Math.floor(v.length / 2)];
};
console.log(`\nSFU median - direct median: ${med('sfu') - med('direct')} ms`);
console.log(JSON.stringify(results));
