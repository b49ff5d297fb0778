// RTMP ingest end to end: FFmpeg publishes over RTMP (H.264 + AAC, as OBS does), the play page
// in headless Chromium decodes the video and plays the Opus audio Vessel transcoded.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import { Harness, liveName, rtcStats, waitFor, waitForMedia } from './helpers.mjs';
import { joinScenario, median } from './simulcast-lib.mjs';

const PLAYER_PC = 'window.vesselPlayer && window.vesselPlayer.pc';

/** @type {Harness} */
let h;

before(async () => {
  h = await Harness.start();
});

after(async () => {
  await h?.close();
});

/** FFmpeg publishing a test pattern and a 440 Hz tone to `live` over RTMP, in real time. */
function publish(addr, live, seconds = 40, keyframeEvery = 30) {
  const args = [
    '-hide_banner', '-loglevel', 'error', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=30',
    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100',
    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-profile:v', 'high', '-bf', '0', '-g', String(keyframeEvery),
    '-tune', 'zerolatency', '-b:v', '800k',
    '-c:a', 'aac', '-ac', '2', '-b:a', '128k',
    '-t', String(seconds), '-f', 'flv', `rtmp://${addr}/live/${live}`,
  ];
  const proc = spawn('ffmpeg', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr.on('data', (d) => h.log.add('ffmpeg', d));
  return proc;
}

test('rt1: FFmpeg over RTMP (H.264 High + AAC 44.1 kHz) plays on the play page with video and audio', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('r');
    const ffmpeg = publish(await h.rtmpAddress(), live);
    try {
      await waitFor(async () => (await (await fetch(`${h.url}/api/lives/${live}`)).json()).onAir, 15000, `${live} on air`);
      const opened = Date.now();
      const viewer = await h.open(`/play/${live}`, `play ${live}`);
      const first = await waitFor(async () => (await rtcStats(viewer, PLAYER_PC))?.video?.framesDecoded > 0 && Date.now(), 20000, 'a first decoded frame');
      console.log(`RTMP live: join -> first decoded frame ${first - opened} ms (keyframe interval 1 s)`);
      const stats = await waitForMedia(viewer, PLAYER_PC, { frames: 60, audioPackets: 100, what: 'RTMP viewer' });
      assert.equal(stats.video.codec, 'video/H264');
      // The page starts muted (autoplay rules); Chromium measures the energy of what it plays
      // out, so unmute as a user would.
      await viewer.evaluate(() => document.querySelectorAll('video').forEach((v) => { v.muted = false; }));
      const heard = await waitFor(async () => {
        const a = (await rtcStats(viewer, PLAYER_PC))?.audio;
        return a?.totalAudioEnergy > 0 && a;
      }, 10000, 'audio energy above zero (the transcoded Opus is not silence)');
      console.log(`RTMP live audio: ${JSON.stringify(heard)}`);
      const state = await (await fetch(`${h.url}/api/lives/${live}`)).json();
      assert.equal(state.ingest, 'rtmp');
      assert.equal(state.source.width, 640);
      assert.deepEqual(state.warnings, []);
      await h.closePage(viewer);
    } finally {
      ffmpeg.kill('SIGKILL');
    }
  }),
);

test('rt2: an RTMP encoder sending B-frames: the play page shows the warning with its fix', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    const live = liveName('s');
    const addr = await h.rtmpAddress();
    const args = [
      '-hide_banner', '-loglevel', 'error', '-re',
      '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=30',
      '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-profile:v', 'high', '-bf', '3', '-g', '30',
      '-an', '-t', '30', '-f', 'flv', `rtmp://${addr}/live/${live}`,
    ];
    const ffmpeg = spawn('ffmpeg', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      const viewer = await h.open(`/play/${live}`, `play ${live}`);
      const text = await waitFor(
        () => viewer.evaluate(() => document.getElementById('warnings').textContent),
        20000,
        'the B-frames warning on the play page',
      );
      assert.match(text, /B-frames/);
      assert.match(text, /bframes=0/);
      await h.closePage(viewer);
    } finally {
      ffmpeg.kill('SIGKILL');
    }
  }),
);

/** The server's count of viewers started from a kept group of pictures. */
async function gopReplays() {
  const text = await (await fetch(`${h.url}/metrics`)).text();
  return Number(text.match(/^vessel_gop_replays_total (\d+)/m)?.[1] ?? 0);
}

test('rt3: OBS\'s default 8 s keyframe interval: viewers still start at once, from the kept group of pictures', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('g');
    // x264's default keyframe interval (250 frames), which OBS keeps unless told otherwise.
    const ffmpeg = publish(await h.rtmpAddress(), live, 60, 240);
    try {
      await waitFor(async () => (await (await fetch(`${h.url}/api/lives/${live}`)).json()).onAir, 15000, `${live} on air`);
      const before = await gopReplays();
      const joins = await joinScenario(h, live, { samples: 3 });
      const med = median(joins.map((j) => j.firstFrameMs));
      console.log(`# RTMP live with 8 s keyframes: join → first decoded frame ${joins.map((j) => j.firstFrameMs).join(', ')} ms (median ${med} ms; connected at ${joins.map((j) => j.connectedMs).join(', ')} ms)`);
      assert.ok(joins.every((j) => j.firstFrameMs != null), `every join decoded a frame: ${JSON.stringify(joins)}`);
      // Waiting for the encoder's next keyframe would take 4 s on average.
      assert.ok(med < 1500, `median join → first frame ${med} ms`);
      assert.ok((await gopReplays()) - before >= 3, 'each join started from the kept group');
    } finally {
      ffmpeg.kill('SIGKILL');
    }
  }),
);
