// Glass-to-glass latency of an RTMP live (an encoder as OBS would be, FFmpeg's libx264 with the
// zerolatency tune, 1 s keyframes, no B-frames) against a WHIP live (the cast page of the page
// pair), both to /assets/latency-play.html in headless Chromium through Vessel, in one run:
// rounds rtmp, whip, rtmp, whip.
//
// The RTMP source (bench/clock-source.mjs) paints the same block pattern as
// /assets/latency-cast.html (the wall clock in ms and a frame counter; see web/latency-lib.js)
// into raw 640×480 frames, 30 per second, and pipes them into FFmpeg, which encodes (ultrafast,
// 900 kbit/s) and publishes over RTMP. The play page reads the clock back out of each presented
// frame: delay = its clock − the painted clock (one machine, one clock). Audio is left out: it
// does not change the video's delay.
//
//   scripts/bench-rtmp-latency [frames per round, default 300] [keyframe interval in s, default 1]
//
// With a long keyframe interval, a viewer starts from the kept group of pictures (src/sfu/gop.rs):
// the first frames it presents are that group's, older, before it catches up to the live edge.

import { Harness, waitInPage } from '../tests/browser/helpers.mjs';
import { rtmpSource } from './clock-source.mjs';

const samples = Number(process.argv[2] || 300);
const keyframeSeconds = Number(process.argv[3] || 1);

async function rtmpRound(h, rtmp, frames, label) {
  const session = `${label}-${Math.random().toString(36).slice(2, 8)}`;
  const stop = rtmpSource(h, `rtmp://${rtmp}/live/latency-${session}`, keyframeSeconds);
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
    const rtmp = await h.rtmpAddress();
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
