// LL-HLS end to end: FFmpeg publishes over RTMP (H.264 + AAC, which the LL-HLS keeps as AAC),
// hls.js (tests/browser/node_modules, injected into a Vessel page) plays /hls/{live}/index.m3u8
// in low-latency mode in headless Chromium; the playlists' LL-HLS rules and blocking reload are
// checked from node; a VP8 WebRTC caster's live answers 409.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import { Harness, liveName, waitFor, waitInPage } from './helpers.mjs';
import { hlsState, playHls } from './hls-lib.mjs';

/** @type {Harness} */
let h;

before(async () => {
  h = await Harness.start();
});

after(async () => {
  await h?.close();
});

/**
 * FFmpeg publishing a test pattern and a 440 Hz tone to `live` over RTMP, in real time: H.264
 * High, 30 fps, a keyframe a second, no B-frames, zerolatency; AAC at `sampleRate`.
 */
function publish(addr, live, { seconds = 45, sampleRate = 48000 } = {}) {
  const args = [
    '-hide_banner', '-loglevel', 'error', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=30',
    '-f', 'lavfi', '-i', `sine=frequency=440:sample_rate=${sampleRate}`,
    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-profile:v', 'high', '-bf', '0', '-g', '30',
    '-tune', 'zerolatency', '-b:v', '800k',
    '-c:a', 'aac', '-ac', '2', '-b:a', '128k',
    '-t', String(seconds), '-f', 'flv', `rtmp://${addr}/live/${live}`,
  ];
  const proc = spawn('ffmpeg', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr.on('data', (d) => h.log.add('ffmpeg', d));
  return proc;
}

async function onAir(live) {
  await waitFor(async () => (await (await fetch(`${h.url}/api/lives/${live}`)).json()).onAir, 15000, `${live} on air`);
}

/** `NAME=value` of an attribute list (quotes removed). */
function attr(line, name) {
  const m = line?.match(new RegExp(`(?:^|[:,])${name}=("[^"]*"|[^,]*)`));
  return m ? m[1].replace(/^"|"$/g, '') : undefined;
}

/** The (msn, part) of a media playlist's EXT-X-PRELOAD-HINT. */
function preloadHint(text) {
  const line = text.split('\n').find((l) => l.startsWith('#EXT-X-PRELOAD-HINT:'));
  assert.ok(line, `a preload hint in\n${text}`);
  assert.equal(attr(line, 'TYPE'), 'PART');
  const m = attr(line, 'URI').match(/^part-(\d+)-(\d+)\.m4s/);
  assert.ok(m, `a part URI in ${line}`);
  return { msn: Number(m[1]), part: Number(m[2]), uri: attr(line, 'URI') };
}

const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

test('hl1: hls.js (low-latency mode) plays an RTMP live over LL-HLS: 10 s of video and audio without a stall', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    const live = liveName('hl');
    const ffmpeg = publish(await h.rtmpAddress(), live, { seconds: 50, sampleRate: 48000 });
    try {
      await onAir(live);
      const page = await h.open('/', `hls.js ${live}`);
      await page.bringToFront();
      const opened = Date.now();
      await playHls(page, `${h.url}/hls/${live}/index.m3u8`);
      await waitInPage(page, 'window.hlsRun.playingAt != null || window.hlsRun.fatal', 20000, 'hls.js playing');
      const started = Date.now();
      let state = await hlsState(page);
      assert.equal(state.fatal, null, `no fatal hls.js error: ${JSON.stringify(state.fatal)}`);
      console.log(`# hls.js ${state.version}: page ready -> playing ${started - opened} ms; levels ${JSON.stringify(state.levels)}; MSE tracks ${JSON.stringify(state.tracks)}`);
      state = await waitFor(
        async () => {
          const s = await hlsState(page);
          if (s.fatal) throw new Error(`fatal hls.js error: ${JSON.stringify(s.fatal)}`);
          return s.played >= 10.2 && s;
        },
        30000,
        '10 s of media played',
        500,
      );
      const { errors, levels, tracks, ...shown } = state;
      console.log(`# hls.js LL-HLS playback: ${JSON.stringify(shown)}`);
      console.log(`# hls.js latency (s behind the playlist edge) median ${state.latencyMedian}, target ${state.targetLatencyMedian}; behind the wall clock by PROGRAM-DATE-TIME median ${state.behindClockMedian} (${state.latencySamples} samples over ${Math.round(state.playingForMs / 100) / 10} s)`);
      if (errors.length) console.log(`# hls.js non-fatal errors: ${JSON.stringify(errors.map(({ details, at, reason }) => ({ details, at: Math.round(at), reason })))}`);
      assert.ok(state.played >= 10, `currentTime advanced ${state.played} s`);
      assert.equal(state.stallsAfterGrace, 0, `no bufferStalledError after the first second: ${JSON.stringify(errors)}`);
      assert.equal(state.waitingAfterGrace, 0, `no 'waiting' event after the first second (${state.waitingTotal} in all)`);
      assert.ok(state.totalVideoFrames >= 250, `${state.totalVideoFrames} video frames decoded`);
      // Chromium drops frames it could not show in time: none on an idle machine, up to ~10 %
      // while other builds load both cores.
      assert.ok(state.droppedVideoFrames <= state.totalVideoFrames * 0.15, `${state.droppedVideoFrames} of ${state.totalVideoFrames} frames dropped`);
      // The first playlist hls.js gets has a complete segment (one of parts only, it refuses).
      assert.ok(!errors.some((e) => e.details === 'levelEmptyError'), `no levelEmptyError: ${JSON.stringify(errors)}`);
      assert.equal(state.size, '640x360');
      // One muxed rendition (video + the AAC in each fMP4), and Chromium decoded its audio.
      assert.match(levels[0].videoCodec ?? '', /^avc1\./);
      assert.match(levels[0].audioCodec ?? '', /^mp4a\.40\.2$/); // the RTMP caster's own AAC
      assert.ok(state.audioDecodedBytes > 0, `audio decoded: ${state.audioDecodedBytes} bytes`);
      assert.ok(state.latencyMedian > 0 && state.latencyMedian < 5, `hls.js latency ${state.latencyMedian} s`);
      await h.closePage(page);
    } finally {
      ffmpeg.kill('SIGKILL');
    }
  }),
);

test('hl2: LL-HLS playlists: codecs, part rules, blocking reload held until the part exists, 400 past the edge, 409 for VP8', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    const live = liveName('hm');
    const ffmpeg = publish(await h.rtmpAddress(), live, { seconds: 40, sampleRate: 44100 });
    try {
      await onAir(live);
      // Multivariant: blocks until the first keyframe, then lists the rendition with both codecs.
      const mv = await fetch(`${h.url}/hls/${live}/index.m3u8`);
      assert.equal(mv.status, 200);
      assert.match(mv.headers.get('content-type'), /mpegurl/i);
      const mvText = await mv.text();
      console.log(`# multivariant:\n${mvText.trim()}`);
      assert.match(mvText, /^#EXTM3U/);
      assert.match(mvText, /#EXT-X-STREAM-INF:[^\n]*CODECS="avc1\.[0-9A-Fa-f]{6},mp4a\.40\.2"/);
      const lines = mvText.split('\n');
      const uri = lines[lines.findIndex((l) => l.startsWith('#EXT-X-STREAM-INF:')) + 1].trim();
      assert.equal(uri, 'main/index.m3u8');
      const base = `${h.url}/hls/${live}/main/`;

      // Media playlist: parts, blocking reload, PART-HOLD-BACK ≥ 3 part targets, a preload hint.
      const text = await (await fetch(`${base}index.m3u8`)).text();
      const partInf = text.split('\n').find((l) => l.startsWith('#EXT-X-PART-INF:'));
      assert.ok(partInf, `#EXT-X-PART-INF in\n${text}`);
      const partTarget = Number(attr(partInf, 'PART-TARGET'));
      assert.equal(partTarget, 0.2); // --hls-part's default
      const control = text.split('\n').find((l) => l.startsWith('#EXT-X-SERVER-CONTROL:'));
      assert.equal(attr(control, 'CAN-BLOCK-RELOAD'), 'YES');
      assert.ok(Number(attr(control, 'PART-HOLD-BACK')) >= 3 * partTarget - 1e-9, control); // 3 × 0.2 = 0.6000000000000001
      assert.match(text, /#EXT-X-PART:DURATION=[0-9.]+,URI="part-\d+-\d+\.m4s"/);
      assert.match(text, /#EXT-X-PROGRAM-DATE-TIME:/);
      preloadHint(text);

      // Blocking reload for the hinted part, with the hinted part itself fetched alongside (it
      // is held until it exists too): the playlist must come when the part does, not before and
      // not much after. Each round asks right after the previous part came out, so it is held
      // for about the new part's duration (parts are cut at frame boundaries, never longer than
      // PART-TARGET; a segment's last part may be shorter). The first round only aligns on a
      // part boundary.
      let last = text;
      const rounds = [];
      for (let i = 0; i < 9; i++) {
        const hint = preloadHint(last);
        const t0 = performance.now();
        const partDone = fetch(base + hint.uri).then(async (r) => ({ status: r.status, bytes: (await r.arrayBuffer()).byteLength, at: performance.now() }));
        const playlistDone = fetch(`${base}index.m3u8?_HLS_msn=${hint.msn}&_HLS_part=${hint.part}`).then(async (r) => ({ status: r.status, text: await r.text(), at: performance.now() }));
        const [part, playlist] = await Promise.all([partDone, playlistDone]);
        assert.equal(part.status, 200, `the hinted ${hint.uri}`);
        assert.equal(playlist.status, 200, playlist.text);
        const listed = playlist.text.split('\n').find((l) => l.startsWith('#EXT-X-PART:') && attr(l, 'URI') === hint.uri);
        assert.ok(listed, `the blocking response lists ${hint.uri}:\n${playlist.text}`);
        last = playlist.text;
        if (i === 0) continue;
        rounds.push({
          hint: hint.uri,
          partDuration: Number(attr(listed, 'DURATION')),
          heldMs: Math.round(playlist.at - t0),
          partMs: Math.round(part.at - t0),
          afterPartMs: Math.round(playlist.at - part.at),
          bytes: part.bytes,
        });
      }
      const long = rounds.filter((r) => r.partDuration >= 0.6 * partTarget); // not a segment's short last part
      console.log(`# blocking reload (_HLS_msn/_HLS_part of the preload hint), per round: ${rounds.map((r) => `${r.hint} (${r.partDuration} s) held ${r.heldMs} ms, part at ${r.partMs} ms`).join('; ')}`);
      console.log(`# blocking reload: held median ${median(long.map((r) => r.heldMs))} ms for parts ≥ ${0.6 * partTarget} s (${long.length} rounds); playlist − part ${rounds.map((r) => r.afterPartMs).join(', ')} ms`);
      assert.ok(long.length >= 3, `rounds waiting for a full part: ${JSON.stringify(rounds)}`);
      for (const r of rounds) {
        assert.ok(r.heldMs < 1500, `held ${r.heldMs} ms: ${JSON.stringify(r)}`);
        // Answered when the part came out: within 100 ms of the part's own (blocked) request.
        assert.ok(Math.abs(r.afterPartMs) < 100, `the playlist came ${r.afterPartMs} ms after the part: ${JSON.stringify(r)}`);
      }
      // It blocked: held about as long as the part it waited for took to come out.
      for (const r of long) assert.ok(r.heldMs > 250 * r.partDuration, `held only ${r.heldMs} ms for a ${r.partDuration} s part: ${JSON.stringify(r)}`);

      // _HLS_msn far past the last segment: 400 at once, not held.
      const far = preloadHint(last).msn + 10;
      const t0 = performance.now();
      const bad = await fetch(`${base}index.m3u8?_HLS_msn=${far}&_HLS_part=0`);
      const badMs = performance.now() - t0;
      const badText = await bad.text();
      console.log(`# _HLS_msn=${far} (last + 10): ${bad.status} in ${Math.round(badMs)} ms: ${badText}`);
      assert.equal(bad.status, 400);
      assert.ok(badMs < 500, `answered at once (${badMs} ms)`);
    } finally {
      ffmpeg.kill('SIGKILL');
    }

    // A WebRTC caster sending VP8 (one encoding): its live is refused with a reason.
    const vp8 = liveName('hv');
    const caster = await h.open(`/cast/${vp8}?codec=VP8&simulcast=0`, `cast ${vp8}`);
    try {
      await waitInPage(caster, `!document.getElementById('golive').disabled`, 15000, 'camera ready (#golive enabled)');
      await caster.click('#golive');
      await waitInPage(caster, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'publisher state "live"');
      const codec = await waitFor(
        async () => (await caster.evaluate(async () => {
          const report = await window.vesselPublisher.pc.getStats();
          for (const s of report.values()) {
            if (s.type === 'outbound-rtp' && s.kind === 'video' && s.framesEncoded > 0) return report.get(s.codecId)?.mimeType;
          }
          return null;
        })),
        15000,
        'the caster encoding video',
      );
      assert.equal(codec, 'video/VP8');
      await onAir(vp8);
      const refused = await fetch(`${h.url}/hls/${vp8}/index.m3u8`);
      const reason = await refused.text();
      console.log(`# VP8 live: multivariant ${refused.status}: ${reason}`);
      assert.equal(refused.status, 409);
      assert.match(reason, /VP8/);
      const media = await fetch(`${h.url}/hls/${vp8}/main/index.m3u8`);
      assert.equal(media.status, 409);
      assert.match(await media.text(), /VP8/);
    } finally {
      await caster.evaluate(() => window.vesselPublisher?.stop()).catch(() => {});
      await h.closePage(caster);
    }
  }),
);

/** A media playlist's complete segments: { msn, pdt (ms), duration (s) }. */
function segmentsOf(text) {
  const lines = text.split('\n');
  let msn = Number(lines.find((l) => l.startsWith('#EXT-X-MEDIA-SEQUENCE:'))?.split(':')[1] ?? 0);
  const out = [];
  let pdt = null;
  for (const l of lines) {
    if (l.startsWith('#EXT-X-PROGRAM-DATE-TIME:')) pdt = Date.parse(l.slice('#EXT-X-PROGRAM-DATE-TIME:'.length));
    else if (l.startsWith('#EXT-X-SKIP:')) msn += Number(attr(l, 'SKIPPED-SEGMENTS'));
    else if (l.startsWith('#EXTINF:')) {
      out.push({ msn, pdt, duration: Number(l.slice(8).split(',')[0]) });
      msn += 1;
      pdt = pdt == null ? null : pdt + out.at(-1).duration * 1000;
    }
  }
  return out;
}

test('hl8: a WHIP H.264 simulcast caster: a rendition per layer with their segments on the same keyframes, keyframes at one per segment; hls.js plays it 10 s with video and Opus audio, then switches down the ladder without a stall', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('hw');
    const caster = await h.open(`/cast/${live}?codec=H264`, `cast ${live}`);
    try {
      await waitInPage(caster, `!document.getElementById('golive').disabled`, 15000, 'camera ready (#golive enabled)');
      await caster.click('#golive');
      await waitInPage(caster, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'publisher state "live"');
      const encoding = () => caster.evaluate(async () => {
        const report = await window.vesselPublisher.pc.getStats();
        const layers = {};
        for (const s of report.values()) {
          if (s.type === 'outbound-rtp' && s.kind === 'video' && s.framesEncoded > 0) {
            layers[s.rid ?? 'main'] = { codec: report.get(s.codecId)?.mimeType, keyFrames: s.keyFramesEncoded, frames: s.framesEncoded, size: `${s.frameWidth}x${s.frameHeight}` };
          }
        }
        return layers;
      });
      // Chromium sends H.264 (OpenH264) in three layers once its bandwidth estimate carries them.
      const layers = await waitFor(async () => {
        const l = await encoding();
        return Object.keys(l).length >= 3 && l;
      }, 20000, 'three H.264 layers encoding');
      for (const l of Object.values(layers)) assert.equal(l.codec, 'video/H264');
      await onAir(live);

      // The multivariant playlist lists a rendition per layer, each with its size and Opus.
      const variants = await waitFor(async () => {
        const r = await fetch(`${h.url}/hls/${live}/index.m3u8`);
        if (r.status !== 200) return false;
        const lines = (await r.text()).split('\n');
        const v = lines.flatMap((l, i) => (l.startsWith('#EXT-X-STREAM-INF:') ? [{ inf: l, uri: lines[i + 1].trim() }] : []));
        return v.length >= 3 && v;
      }, 20000, 'three renditions in the multivariant playlist', 500);
      console.log(`# renditions: ${variants.map((v) => `${v.uri} ${attr(v.inf, 'RESOLUTION')} ${attr(v.inf, 'CODECS')}`).join('; ')}`);
      for (const v of variants) assert.match(attr(v.inf, 'CODECS'), /^avc1\.[0-9a-f]{6},opus$/);
      assert.equal(new Set(variants.map((v) => attr(v.inf, 'RESOLUTION'))).size, 3, 'three picture sizes');

      const keyframesBefore = await encoding();
      const countingSince = Date.now();
      const page = await h.open('/', `hls.js ${live}`);
      await playHls(page, `${h.url}/hls/${live}/index.m3u8`);
      await waitInPage(page, 'window.hlsRun.playingAt != null || window.hlsRun.fatal', 20000, 'hls.js playing');
      const state = await waitFor(async () => {
        const s = await hlsState(page);
        if (s.fatal) throw new Error(`fatal hls.js error: ${JSON.stringify(s.fatal)}`);
        return s.played >= 10.2 && s;
      }, 30000, '10 s of media played', 500);
      const keyframesAfter = await encoding();
      const seconds = (Date.now() - countingSince) / 1000;

      // Segments line up across renditions: for the segments every rendition still lists, the
      // same start (program date time, within the layers' arrival spread) and the same length.
      const lists = {};
      for (const v of variants) lists[v.uri] = segmentsOf(await (await fetch(`${h.url}/hls/${live}/${v.uri}`)).text());
      const [first, ...others] = Object.values(lists);
      // A layer whose encoder skips a requested keyframe (Chromium's, on a loaded machine) ends
      // that one segment later than the others: most segments, not all, must line up. Without
      // the alignment a layer that came on later misses every one.
      let compared = 0;
      const misaligned = [];
      for (const s of first.slice(1)) {
        for (const o of others) {
          const match = o.find((x) => Math.abs(x.pdt - s.pdt) <= 150);
          compared += 1;
          if (!match || Math.abs(match.duration - s.duration) > 0.05) misaligned.push({ s, match });
        }
      }
      console.log(`# segments compared across renditions: ${compared}, not lined up: ${JSON.stringify(misaligned)}`);
      assert.ok(compared >= 10, `${compared} segments compared`);
      assert.ok(misaligned.length <= compared / 4, `segments that do not line up: ${JSON.stringify(misaligned)} in ${JSON.stringify(lists)}`);
      // Keyframes: about one a segment per layer, not one per 500 ms request window.
      const made = Object.fromEntries(Object.entries(keyframesAfter).map(([rid, l]) => [rid, l.keyFrames - (keyframesBefore[rid]?.keyFrames ?? 0)]));
      console.log(`# over ${seconds.toFixed(1)} s of playback: keyframes per layer ${JSON.stringify(made)}; segments ${JSON.stringify(Object.fromEntries(Object.entries(lists).map(([k, l]) => [k, l.map((s) => s.duration)])))}`);
      for (const [rid, n] of Object.entries(made)) assert.ok(n <= seconds * 1.3 + 2, `layer ${rid}: ${n} keyframes in ${seconds.toFixed(1)} s`);

      const { errors, levels, tracks, samples, ...shown } = state;
      console.log(`# hls.js on a WHIP simulcast live: ${JSON.stringify(shown)}; levels ${JSON.stringify(levels)}`);
      assert.ok(levels.length >= 3, `hls.js sees the ladder: ${JSON.stringify(levels)}`);
      assert.equal(state.stallsAfterGrace, 0, `no bufferStalledError after the first second: ${JSON.stringify(errors)}`);
      assert.equal(state.waitingAfterGrace, 0, `no 'waiting' event after the first second (${state.waitingTotal} in all)`);
      assert.ok(state.totalVideoFrames >= 200, `${state.totalVideoFrames} video frames decoded`);
      assert.match(levels[0].audioCodec ?? '', /^opus$/);
      assert.ok(state.audioDecodedBytes > 0, `audio decoded: ${state.audioDecodedBytes} bytes`);

      // Down the ladder: hls.js switches to the smallest rendition and plays on without a stall.
      await page.evaluate(() => { window.hls.currentLevel = 0; });
      const switched = await waitFor(async () => {
        const s = await hlsState(page);
        return s.size === '320x180' && s.played >= state.played + 3 && s;
      }, 15000, 'hls.js playing the 320x180 rendition', 500);
      console.log(`# switched to q: played ${switched.played.toFixed(1)} s, stalls ${switched.stallsAfterGrace}, waiting ${switched.waitingAfterGrace}`);
      assert.equal(switched.stallsAfterGrace, 0, `no stall across the switch: ${JSON.stringify(switched.errors)}`);
      assert.equal(switched.waitingAfterGrace, 0, 'no waiting across the switch');
      await h.closePage(page);
    } finally {
      await caster.evaluate(() => window.vesselPublisher?.stop()).catch(() => {});
      await h.closePage(caster);
    }
  }),
);
