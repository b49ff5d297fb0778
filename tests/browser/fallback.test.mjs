// The play page's own LL-HLS player (web/hls-player.js, Media Source Extensions) and its
// fallback from WebRTC: `/play/{live}?hls=1` plays an RTMP live and a WHIP H.264 live over
// LL-HLS; with the server's media ports dropped (nft) and no TURN, `/play/{live}` turns to
// LL-HLS by itself. hl6 plays a recording (needs the recordings API, `--record`: skipped
// without it).

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { Harness, liveName, waitFor, waitInPage } from './helpers.mjs';

const run = promisify(execFile);

/** @type {Harness} */
let h;
const recordDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vessel-fallback-rec-'));

before(async () => {
  h = await Harness.start({ server: { extraArgs: ['--record', recordDir] } });
});

after(async () => {
  await h?.close();
  fs.rmSync(recordDir, { recursive: true, force: true });
});

/** FFmpeg publishing a test pattern (640×360) and a 440 Hz tone over RTMP (as in hls.test.mjs). */
function publish(addr, live, harness = h, seconds = 45, size = '640x360') {
  const args = [
    '-hide_banner', '-loglevel', 'error', '-re',
    '-f', 'lavfi', '-i', `testsrc=size=${size}:rate=30`,
    '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-profile:v', 'high', '-bf', '0', '-g', '30',
    '-tune', 'zerolatency', '-b:v', '800k',
    '-c:a', 'aac', '-ac', '2', '-b:a', '128k',
    '-t', String(seconds), '-f', 'flv', `rtmp://${addr}/live/${live}`,
  ];
  const proc = spawn('ffmpeg', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr.on('data', (d) => harness.log.add('ffmpeg', d));
  return proc;
}

async function onAir(live, harness = h) {
  await waitFor(async () => (await (await fetch(`${harness.url}/api/lives/${live}`)).json()).onAir, 15000, `${live} on air`);
}

/** Starts counting the page video's `waiting` events (stalls) from now. */
async function watchStalls(page) {
  await page.evaluate(() => {
    const v = document.getElementById('video');
    window.stalls = [];
    v.addEventListener('waiting', () => window.stalls.push({ at: performance.now(), t: v.currentTime }));
  });
}

/** What the play page shows and its <video> decoded. */
function pageState(page) {
  return page.evaluate(() => {
    const v = document.getElementById('video');
    const q = v.getVideoPlaybackQuality();
    const p = window.vesselPlayer;
    return {
      at: performance.now(),
      state: p?.state,
      path: p?.path,
      pathShown: document.getElementById('path').textContent,
      pathData: document.getElementById('path').dataset.path,
      delayShown: document.getElementById('delay').dataset.delay,
      delayText: document.getElementById('delay').textContent,
      hlsDelay: p?.hls?.delay ?? window.vesselHls?.delay ?? null,
      rendition: p?.hls?.rendition ?? null,
      everConnected: Boolean(p?._everConnected),
      currentTime: v.currentTime,
      paused: v.paused,
      rate: v.playbackRate,
      frames: q.totalVideoFrames,
      dropped: q.droppedVideoFrames,
      audioBytes: v.webkitAudioDecodedByteCount ?? null,
      size: `${v.videoWidth}x${v.videoHeight}`,
      stalls: window.stalls ?? [],
      error: document.getElementById('error').textContent,
    };
  });
}

const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

/**
 * Plays ≥ 10 s on `page` (already playing): currentTime advances 10 s, no `waiting` after the
 * first second, frames (of a source at `fps`) and audio decoded; returns the samples' delay
 * figures.
 */
async function playsTenSeconds(page, what, fps = 30) {
  const first = await waitFor(async () => {
    const s = await pageState(page);
    return s.currentTime > 0 && !s.paused && s.frames > 0 && s;
  }, 20000, `${what}: playing`);
  await watchStalls(page);
  const delays = [];
  const last = await waitFor(async () => {
    const s = await pageState(page);
    if (s.hlsDelay != null) delays.push(s.hlsDelay);
    return s.currentTime - first.currentTime >= 10 && s;
  }, 25000, `${what}: 10 s played`, 500);
  const played = last.currentTime - first.currentTime;
  const wall = (last.at - first.at) / 1000;
  const frames = last.frames - first.frames;
  console.log(`# ${what}: played ${played.toFixed(2)} s in ${wall.toFixed(2)} s, ${frames} frames (${last.dropped} dropped in all), audio ${last.audioBytes} bytes decoded, ${last.size}, stalls ${last.stalls.length}, delay median ${median(delays)?.toFixed(3)} s (min ${Math.min(...delays).toFixed(3)}, max ${Math.max(...delays).toFixed(3)}), rate now ${last.rate}, shown "${last.pathShown}" "${last.delayText}"`);
  assert.ok(played >= 10, `${what}: currentTime advanced ${played} s`);
  // A stall would leave currentTime behind the wall clock (catch-up can only add ~8 %).
  assert.ok(wall < played * 1.15 + 1, `${what}: 10 s of media took ${wall} s`);
  assert.equal(last.stalls.filter((x) => x.at > first.at + 1000).length, 0, `${what}: no 'waiting' after the first second: ${JSON.stringify(last.stalls)}`);
  // At least 80 % of the source's frames (FFmpeg 30 fps, Chromium's fake camera 20 fps).
  assert.ok(frames >= played * fps * 0.8, `${what}: ${frames} frames decoded in ${played} s (${fps} fps sent)`);
  assert.ok(last.dropped <= last.frames * 0.15, `${what}: ${last.dropped} of ${last.frames} frames dropped`);
  assert.ok(last.audioBytes > first.audioBytes, `${what}: audio decoded (${first.audioBytes} → ${last.audioBytes} bytes)`);
  assert.ok(delays.length > 5, `${what}: the player reports its delay`);
  assert.ok(median(delays) > 0 && median(delays) < 5, `${what}: delay median ${median(delays)} s`);
  return { median: median(delays), last };
}

test('hl3: the play page\'s own LL-HLS player (?hls=1, MSE) plays an RTMP live: 10 s, no stall, video and audio decoded, path and delay shown', { timeout: 70000 }, () =>
  h.diagnose(async () => {
    const live = liveName('h3');
    const ffmpeg = publish(await h.rtmpAddress(), live);
    try {
      await onAir(live);
      const page = await h.open(`/play/${live}?hls=1`, `play ${live}`);
      const opened = Date.now();
      await waitInPage(page, `window.vesselPlayer?.state === 'playing'`, 20000, 'player state playing');
      console.log(`# hl3: /play?hls=1 opened -> playing over LL-HLS in ${Date.now() - opened} ms`);
      const { last } = await playsTenSeconds(page, 'hl3 RTMP over LL-HLS');
      assert.equal(last.path, 'hls');
      assert.equal(last.pathShown, 'LL-HLS');
      assert.equal(last.pathData, 'hls');
      assert.equal(last.size, '640x360');
      assert.match(last.rendition?.codecs ?? '', /^avc1\.[0-9a-f]{6},mp4a\.40\.2$/i); // the RTMP caster's AAC
      // The page shows the delay it measures.
      await waitInPage(page, `document.getElementById('delay').dataset.delay !== ''`, 5000, 'the delay shown');
      assert.match((await pageState(page)).delayText, /^\d+\.\d s behind the caster$/);
      await h.closePage(page);
    } finally {
      ffmpeg.kill('SIGKILL');
    }
  }),
);

test('hl4: a WHIP caster on the cast page sends H.264 by itself (the server packages HLS), and /play?hls=1 plays it over LL-HLS: 10 s, no stall', { timeout: 80000 }, () =>
  h.diagnose(async () => {
    const live = liveName('h4');
    const caster = await h.open(`/cast/${live}?simulcast=0`, `cast ${live}`);
    try {
      await waitInPage(caster, `!document.getElementById('golive').disabled`, 15000, 'camera ready (#golive enabled)');
      await caster.click('#golive');
      await waitInPage(caster, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'publisher state "live"');
      // No ?codec: vessel.js put H.264 first because /api/ice-servers says hls: true.
      await waitInPage(caster, `(document.body.dataset.codec ?? '') !== ''`, 15000, 'the caster encoding video');
      const codec = await caster.evaluate(() => document.body.dataset.codec);
      assert.equal(codec, 'video/H264');
      assert.equal(await caster.evaluate(() => document.getElementById('vp8').textContent), '');
      await onAir(live);
      const page = await h.open(`/play/${live}?hls=1`, `play ${live}`);
      const opened = Date.now();
      await waitInPage(page, `window.vesselPlayer?.state === 'playing'`, 20000, 'player state playing');
      console.log(`# hl4: /play?hls=1 opened -> playing over LL-HLS in ${Date.now() - opened} ms`);
      const { last } = await playsTenSeconds(page, 'hl4 WHIP H.264 over LL-HLS', 20);
      assert.equal(last.pathShown, 'LL-HLS');
      assert.match(last.rendition?.codecs ?? '', /^avc1\./);
      await h.closePage(page);
    } finally {
      await caster.evaluate(() => window.vesselPublisher?.stop()).catch(() => {});
      await h.closePage(caster);
    }
  }),
);

test('hl7: the play page\'s LL-HLS player goes on when another caster takes the live (discontinuity, new init segment, new size)', { timeout: 80000 }, () =>
  h.diagnose(async () => {
    const live = liveName('h7');
    const addr = await h.rtmpAddress();
    const first = publish(addr, live);
    let second = null;
    try {
      await onAir(live);
      const page = await h.open(`/play/${live}?hls=1`, `play ${live}`);
      await waitInPage(page, `window.vesselPlayer?.state === 'playing'`, 20000, 'player state playing');
      await waitFor(async () => (await pageState(page)).currentTime > 3, 10000, '3 s played');
      // Another caster (another size: a new SPS, so a new init segment) takes the live.
      second = publish(addr, live, h, 45, '480x270');
      const switched = Date.now();
      const after = await waitFor(async () => {
        const s = await pageState(page);
        return s.size === '480x270' && s;
      }, 20000, 'the new caster\'s picture (480x270)');
      console.log(`# hl7: the new caster's picture shown ${Date.now() - switched} ms after it started publishing`);
      const later = await waitFor(async () => {
        const s = await pageState(page);
        return s.currentTime - after.currentTime >= 5 && s;
      }, 15000, '5 s played after the switch', 500);
      assert.ok(later.frames - after.frames >= 100, `${later.frames - after.frames} frames decoded in the 5 s after the switch`);
      assert.ok(later.audioBytes > after.audioBytes, 'audio decoded after the switch');
      assert.equal(later.path, 'hls');
      const mv = await (await fetch(`${h.url}/hls/${live}/main/index.m3u8`)).text();
      console.log(`# hl7: delay now ${later.hlsDelay} s; the media playlist has ${mv.match(/#EXT-X-DISCONTINUITY\n/g)?.length ?? 0} discontinuities, maps ${[...new Set(mv.match(/init-\d+\.mp4/g))].join(', ')}`);
      await h.closePage(page);
    } finally {
      first.kill('SIGKILL');
      second?.kill('SIGKILL');
    }
  }),
);

/** Whether nft can drop traffic here without touching the machine's own network. */
async function nftUsable() {
  if (process.env.VESSEL_BROWSER_TESTS_NO_NETNS === '1') return 'not in a network namespace of its own (VESSEL_BROWSER_TESTS_NO_NETNS=1)';
  try {
    await run('nft', ['list', 'tables']);
    return null;
  } catch (err) {
    return `nft unusable (apt-get install nftables): ${err.stderr?.trim() || err.message}`;
  }
}

test('hl5: with no TURN and UDP + TCP to the media ports dropped, /play/{live} turns to LL-HLS by itself within a few seconds and plays', { timeout: 90000 }, async (t) => {
  const why = await nftUsable();
  if (why) {
    t.skip(why);
    return;
  }
  const blocked = await Harness.start({ server: { extraArgs: ['--no-turn'] } });
  const table = 'vessel_fallback';
  try {
    await blocked.diagnose(async () => {
      const live = liveName('h5');
      const ffmpeg = publish(await blocked.rtmpAddress(), live, blocked);
      try {
        await onAir(live, blocked);
        assert.deepEqual((await (await fetch(`${blocked.url}/api/ice-servers`)).json()).iceServers, [], 'no TURN');
        // New flows to the media ports (both workers, UDP and TCP) dropped; HTTP open. The RTMP
        // ingest's own WebRTC leg to the media port is up already (conntrack: established).
        const m = blocked.server.mediaPort;
        await run('nft', ['add', 'table', 'inet', table]);
        await run('nft', ['add', 'chain', 'inet', table, 'out', '{ type filter hook output priority 0; }']);
        await run('nft', ['add', 'rule', 'inet', table, 'out', 'meta', 'l4proto', '{ tcp, udp }', 'th', 'dport', `{ ${m}, ${m + 1} }`, 'ct', 'state', 'new', 'counter', 'drop']);
        const page = await blocked.open(`/play/${live}`, `play ${live}`);
        const opened = Date.now();
        assert.equal(await page.evaluate(() => document.getElementById('path').textContent), 'WebRTC', 'WebRTC first');
        await waitInPage(page, `window.vesselPlayer?.path === 'hls'`, 10000, 'the player on LL-HLS');
        const fellBack = Date.now() - opened;
        await waitInPage(page, `window.vesselPlayer?.state === 'playing'`, 20000, 'player state playing');
        const playing = Date.now() - opened;
        console.log(`# hl5: WebRTC blocked: /play opened -> LL-HLS after ${fellBack} ms -> playing after ${playing} ms`);
        const { last, median: delay } = await playsTenSeconds(page, 'hl5 fallback to LL-HLS');
        assert.ok(fellBack >= 4000 && fellBack < 7000, `fell back after ${fellBack} ms (4.5 s wanted)`);
        assert.ok(!last.everConnected, 'WebRTC never connected (the drop works)');
        assert.equal(last.pathShown, 'LL-HLS');
        assert.equal(last.pathData, 'hls');
        const { stdout } = await run('nft', ['list', 'table', 'inet', table]);
        const dropped = Number(stdout.match(/counter packets (\d+)/)?.[1] ?? 0);
        console.log(`# hl5: ${dropped} packets to the media ports dropped; delay median ${delay} s`);
        assert.ok(dropped > 0, 'the browser tried the media ports');
        await blocked.closePage(page);
      } finally {
        ffmpeg.kill('SIGKILL');
      }
    });
  } finally {
    await run('nft', ['delete', 'table', 'inet', table]).catch(() => {});
    await blocked.close();
  }
});

test('hl6: /play/{live}?recording=FILE plays a recording (.mp4 through its VOD playlist, seekable) [needs the recordings API]', { timeout: 90000 }, async (t) => {
  const probe = await fetch(`${h.url}/api/recordings?live=none`);
  if (probe.status === 404 || probe.status === 405) {
    t.skip(`no recordings API on this server (GET /api/recordings: ${probe.status}); needs the recordings branch`);
    return;
  }
  await h.diagnose(async () => {
    const live = liveName('h6');
    const ffmpeg = publish(await h.rtmpAddress(), live, h, 14);
    await onAir(live);
    await new Promise((resolve) => ffmpeg.once('exit', resolve));
    const entry = await waitFor(async () => {
      const list = await (await fetch(`${h.url}/api/recordings?live=${live}`)).json();
      return list.recordings?.find((r) => r.file.endsWith('.mp4') && r.duration > 8);
    }, 40000, `a recording of ${live} listed`, 1000);
    console.log(`# hl6: recording ${JSON.stringify(entry)}`);
    const page = await h.open(`/play/${live}?recording=${encodeURIComponent(entry.file)}`, `recording ${live}`);
    await waitFor(async () => {
      const s = await pageState(page);
      return s.currentTime > 1 && s.frames > 20 && s;
    }, 20000, 'the recording playing');
    const s0 = await pageState(page);
    assert.equal(s0.pathShown, 'Recording');
    assert.ok(s0.audioBytes > 0, `audio decoded: ${s0.audioBytes}`);
    // Seek to the middle: plays on from there.
    await page.evaluate(() => { document.getElementById('video').currentTime = 6; });
    const s1 = await waitFor(async () => {
      const s = await pageState(page);
      return s.currentTime > 6.5 && s.frames > s0.frames + 15 && s;
    }, 15000, 'playing on after a seek to 6 s');
    console.log(`# hl6: after the seek: ${JSON.stringify({ t: s1.currentTime, frames: s1.frames, size: s1.size })}`);
    await h.closePage(page);
  });
});
