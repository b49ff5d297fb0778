// Opens a live's play page (/play/LIVE) in headless Chromium and reports what the viewer
// decodes: video frames (codec, size), audio packets and, after unmuting as a user would, the
// audio energy Chromium measured. Not a test of its own: scripts/obs-smoke runs it against a
// server it started.
//
//   node tests/browser/play-probe.mjs BASE_URL LIVE [SECONDS]
//
// Prints one JSON line; exits 1 when no video frame was decoded or no audio was heard within
// SECONDS (default 20).

import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, rtcStats, waitFor } from './helpers.mjs';

const [base, live, seconds = '20'] = process.argv.slice(2);
if (!base || !live) {
  console.error('usage: node play-probe.mjs BASE_URL LIVE [SECONDS]');
  process.exit(2);
}
const PC = 'window.vesselPlayer && window.vesselPlayer.pc';
const budget = Number(seconds) * 1000;
const result = { ok: false, firstFrameMs: null, video: null, audio: null, heard: null, errors: [] };

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
try {
  const page = await (await browser.newContext({ viewport: { width: 960, height: 600 } })).newPage();
  page.on('pageerror', (e) => result.errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && result.errors.push(`console: ${m.text()}`));
  const opened = Date.now();
  await page.goto(`${base}/play/${live}`, { waitUntil: 'domcontentloaded' });
  try {
    await waitFor(async () => (await rtcStats(page, PC))?.video?.framesDecoded > 0, budget, 'a first decoded frame');
    result.firstFrameMs = Date.now() - opened;
    // Six seconds of playback from there (frame rate, freezes), then unmute (Chromium measures the energy of what it
    // plays out; the page starts muted for autoplay) and wait for energy above zero.
    const before = await rtcStats(page, PC);
    await new Promise((r) => setTimeout(r, 6000));
    const after = await rtcStats(page, PC);
    const frames = after.video.framesDecoded - before.video.framesDecoded;
    const fps = frames / ((after.video.timestamp - before.video.timestamp) / 1000);
    result.video = { ...after.video, fps: Math.round(fps * 10) / 10 };
    await page.evaluate(() => document.querySelectorAll('video').forEach((v) => { v.muted = false; }));
    result.heard = await waitFor(async () => {
      const a = (await rtcStats(page, PC))?.audio;
      return a?.totalAudioEnergy > 0 && a;
    }, Math.max(5000, budget - (Date.now() - opened)), 'audio energy above zero').catch((e) => {
      result.errors.push(e.message);
      return null;
    });
    result.audio = (await rtcStats(page, PC))?.audio ?? null;
    result.warningsOnPage = await page.evaluate(() => document.getElementById('warnings')?.textContent ?? '');
    result.ok = result.video.fps > 0 && Boolean(result.heard);
  } catch (err) {
    result.errors.push(err.message);
    result.last = await rtcStats(page, PC).catch(() => null);
  }
} finally {
  await browser.close().catch(() => {});
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
