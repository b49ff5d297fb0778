// End-to-end tests: Vessel's pages and SDK in headless Chromium with fake camera + microphone,
// against the real server binary. Assertions are on WebRTC stats (frames decoded, audio received).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { Harness, REPO, VesselServer, liveName, rtcStats, selectedPair, waitFor, waitForMedia, waitInPage } from './helpers.mjs';

const PLAYER_PC = 'window.vesselPlayer && window.vesselPlayer.pc';
const PUBLISHER_PC = 'window.vesselPublisher && window.vesselPublisher.pc';

/** @type {Harness} */
let h;

before(async () => {
  h = await Harness.start();
});

after(async () => {
  await h?.close();
});

/** Opens /cast/{live} and waits until the camera is ready (Go live enabled). */
async function openCaster(live, query = '') {
  const page = await h.open(`/cast/${live}${query}`, `cast ${live}`);
  await waitInPage(page, `!document.getElementById('golive').disabled`, 15000, 'camera ready (#golive enabled)');
  return page;
}

/** Clicks Go live and waits for the publisher to be live. */
async function goLive(caster) {
  await caster.click('#golive');
  await waitInPage(caster, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'publisher state "live"');
  await waitInPage(caster, `document.getElementById('state').dataset.state === 'live'`, 5000, '#state shows live');
}

async function playerState(page) {
  return page.evaluate(() => ({
    state: window.vesselPlayer?.state,
    overlay: document.getElementById('overlay').dataset.state,
    overlayHidden: document.getElementById('overlay').hidden,
    overlayText: document.getElementById('overlay').textContent,
  }));
}

async function waitPlayerState(page, state, timeoutMs = 15000) {
  return waitFor(
    async () => {
      const s = await playerState(page);
      return s.state === state && s.overlay === state && s;
    },
    timeoutMs,
    `player state "${state}"`,
  );
}

test('a: cast page publishes; three play pages decode video and receive audio; caster counts 3 viewers', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const live = liveName('a');
    const caster = await openCaster(live);
    await goLive(caster);

    const viewers = [];
    for (let i = 0; i < 3; i++) viewers.push(await h.open(`/play/${live}`, `play#${i + 1} ${live}`));
    for (const [i, viewer] of viewers.entries()) {
      const stats = await waitForMedia(viewer, PLAYER_PC, { what: `viewer ${i + 1}` });
      assert.ok(stats.video.frameWidth > 0, 'decoded frames have a size');
      const s = await waitPlayerState(viewer, 'playing');
      assert.equal(s.overlayHidden, true, 'overlay hidden while playing');
    }

    await waitInPage(caster, `document.getElementById('viewers').dataset.viewers === '3'`, 15000, 'caster shows 3 viewers');
    assert.equal(await caster.evaluate(() => window.vesselPublisher.viewers), 3);

    const sent = await rtcStats(caster, PUBLISHER_PC);
    assert.ok(sent.sent.video?.framesEncoded > 0, 'caster encodes video');
    assert.ok(sent.sent.audio?.packetsSent > 0, 'caster sends audio');

    // The viewers' count drops when one leaves (it navigates away: pagehide → DELETE).
    const leaving = viewers.pop();
    await leaving.goto('about:blank');
    await waitInPage(caster, `document.getElementById('viewers').dataset.viewers === '2'`, 15000, 'caster shows 2 viewers');
    await h.closePage(leaving);

    for (const v of viewers) await h.closePage(v);
    await h.closePage(caster);
  }),
);

test('b: a viewer opened before the caster waits, then plays once the live begins', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('b');
    const viewer = await h.open(`/play/${live}`, `play ${live}`);
    const waiting = await waitPlayerState(viewer, 'waiting');
    assert.match(waiting.overlayText, /Waiting for the caster/);
    // The page finished loading (a <video> without frames must not hold the load event back).
    await waitInPage(viewer, `document.readyState === 'complete'`, 10000, 'page load event while waiting');
    assert.equal((await rtcStats(viewer, PLAYER_PC)).connectionState, 'connected');
    const before = await rtcStats(viewer, PLAYER_PC);

    const caster = await openCaster(live);
    await goLive(caster);

    await waitPlayerState(viewer, 'playing', 20000);
    const stats = await waitForMedia(viewer, PLAYER_PC, { what: 'early viewer' });
    assert.equal(stats.id, before.id, 'same RTCPeerConnection: no reconnection was needed');

    await h.closePage(caster);
    await h.closePage(viewer);
  }),
);

test('c: the caster stops and comes back (Stop/Go live, then a reload): viewers show "ended" and resume without reload', { timeout: 150000 }, () =>
  h.diagnose(async () => {
    const live = liveName('c');
    const caster = await openCaster(live);
    await goLive(caster);
    const viewers = [await h.open(`/play/${live}`, `play#1 ${live}`), await h.open(`/play/${live}`, `play#2 ${live}`)];
    const ids = [];
    for (const v of viewers) ids.push((await waitForMedia(v, PLAYER_PC)).id);

    // 1. Stop → the viewers show the end; Go live again → they decode again on the same connection.
    await caster.click('#stop');
    await waitInPage(caster, `window.vesselPublisher.state === 'stopped'`, 10000, 'publisher stopped');
    for (const v of viewers) {
      const s = await waitPlayerState(v, 'ended');
      assert.match(s.overlayText, /The live has ended/);
    }
    const atStop = await Promise.all(viewers.map((v) => rtcStats(v, PLAYER_PC)));

    await goLive(caster);
    for (const [i, v] of viewers.entries()) {
      await waitPlayerState(v, 'playing', 20000);
      const s = await waitForMedia(v, PLAYER_PC, { what: `viewer ${i + 1} after Stop/Go live` });
      assert.equal(s.id, ids[i], 'resumed on the same RTCPeerConnection');
      assert.ok(s.video.framesDecoded > atStop[i].video.framesDecoded, 'framesDecoded kept rising');
    }

    // 2. Reload the cast page (pagehide → DELETE), then Go live again.
    await caster.reload();
    await waitInPage(caster, `!document.getElementById('golive').disabled`, 15000, 'camera ready after reload');
    await goLive(caster);
    for (const [i, v] of viewers.entries()) {
      await waitPlayerState(v, 'playing', 20000);
      const s = await waitForMedia(v, PLAYER_PC, { what: `viewer ${i + 1} after cast page reload` });
      assert.equal(s.id, ids[i], 'resumed on the same RTCPeerConnection');
    }

    for (const v of viewers) await h.closePage(v);
    await h.closePage(caster);
  }),
);

test('d: raw WHIP publish and raw WHEP play (whip-whep.html, no vessel.js) decode frames', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('d');
    const publisher = await h.open(`/assets/whip-whep.html?mode=publish&live=${live}`, `whip ${live}`);
    await waitInPage(publisher, `window.pc && window.pc.connectionState === 'connected'`, 20000, 'WHIP publisher connected');
    assert.equal(await publisher.evaluate(() => typeof window.vesselPublisher), 'undefined');

    const player = await h.open(`/assets/whip-whep.html?mode=play&live=${live}`, `whep ${live}`);
    await waitInPage(player, `window.pc && window.pc.connectionState === 'connected'`, 20000, 'WHEP player connected');
    const stats = await waitForMedia(player, 'window.pc', { what: 'raw WHEP player' });
    assert.ok(stats.video.frameWidth > 0);
    // The raw page takes its ICE servers from /api/ice-servers too.
    for (const page of [publisher, player]) {
      const servers = await page.evaluate(() => window.pc.getConfiguration().iceServers);
      assert.ok(servers.some((s) => s.username && s.urls.some((u) => u.startsWith('turn:'))), `TURN in the raw page's configuration: ${JSON.stringify(servers)}`);
    }

    // DELETE on the session resource: the live goes off air.
    await publisher.click('#stop');
    await waitFor(
      async () => !(await (await fetch(`${h.url}/api/lives/${live}`)).json()).onAir,
      10000,
      'live off air after DELETE',
    );

    await h.closePage(player);
    await h.closePage(publisher);
  }),
);

test('e: the home page lists the live while it is on air', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('e');
    const home = await h.open('/', 'home');
    await waitInPage(home, `!document.getElementById('empty').hidden || document.querySelectorAll('#lives li').length > 0`, 10000, 'list rendered');
    assert.equal(await home.locator(`#lives a[data-live="${live}"]`).count(), 0);

    const caster = await openCaster(live);
    await goLive(caster);
    const info = await (await fetch(`${h.url}/api/lives/${live}`)).json();
    assert.deepEqual({ live: info.live, onAir: info.onAir }, { live, onAir: true });

    await home.bringToFront();
    await waitInPage(home, `document.querySelector('#lives a[data-live="${live}"]')`, 15000, `${live} listed on /`);
    assert.equal(await home.getAttribute(`#lives a[data-live="${live}"]`, 'href'), `/play/${live}`);

    // Following the link plays it.
    await home.click(`#lives a[data-live="${live}"]`);
    await home.waitForURL(`**/play/${live}`);
    await waitForMedia(home, PLAYER_PC, { what: 'viewer opened from the list' });

    // Off air → no longer listed.
    await caster.click('#stop');
    await waitFor(
      async () => !(await (await fetch(`${h.url}/api/lives`)).json()).lives.some((l) => l.live === live),
      10000,
      `${live} gone from /api/lives`,
    );

    await h.closePage(home);
    await h.closePage(caster);
  }),
);

test('f: the home page form leads to the cast page', { timeout: 30000 }, () =>
  h.diagnose(async () => {
    const home = await h.open('/', 'home');
    await home.fill('#livename', 'my_live-1');
    await home.click('#cast');
    await home.waitForURL('**/cast/my_live-1');
    assert.equal(await home.textContent('#live'), 'my_live-1');
    await h.closePage(home);
  }),
);

test('g: after a server restart, the caster and the viewer reconnect by themselves', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const live = liveName('g');
    const caster = await openCaster(live);
    await goLive(caster);
    const viewer = await h.open(`/play/${live}`, `play ${live}`);
    const first = await waitForMedia(viewer, PLAYER_PC);

    await caster.evaluate(() => {
      window.pcBeforeRestart = window.vesselPublisher.pc;
    });
    await h.server.restart();

    await waitInPage(
      caster,
      `window.vesselPublisher.pc !== window.pcBeforeRestart && window.vesselPublisher.state === 'live'`,
      60000,
      'publisher reconnected (new RTCPeerConnection, state live)',
    );
    const stats = await waitForMedia(viewer, PLAYER_PC, { timeoutMs: 60000, what: 'viewer after server restart' });
    assert.notEqual(stats.id, first.id, 'the player made a new connection');
    await waitPlayerState(viewer, 'playing', 15000);

    await h.closePage(viewer);
    await h.closePage(caster);
  }),
);

test('h: a second caster replaces the first; viewers keep playing; the replaced caster stops instead of fighting back', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('h');
    const first = await openCaster(live);
    await goLive(first);
    const viewer = await h.open(`/play/${live}`, `play ${live}`);
    const before = await waitForMedia(viewer, PLAYER_PC, { what: 'viewer of the first caster' });

    const second = await openCaster(live);
    const replacing = Date.now();
    await goLive(second);

    // The first one notices it was replaced and stops (it must not take the live back), soon:
    // the server's DTLS close_notify closes its transport at once (waiting for ICE consent to
    // fail took 17-37 s).
    await waitInPage(first, `window.vesselPublisher.state === 'stopped'`, 10000, 'replaced publisher stopped');
    h.note(`replaced caster stopped ${Date.now() - replacing} ms after the second went live`);
    assert.match(await first.textContent('#error'), /Another caster/);
    const after = await waitForMedia(viewer, PLAYER_PC, { what: 'viewer of the second caster' });
    assert.equal(after.id, before.id, 'same RTCPeerConnection');

    // And the second stays live: give a fight-back a chance to happen, then check.
    await waitFor(
      async () => {
        const s = await second.evaluate(() => window.vesselPublisher.state);
        if (s !== 'live') throw new Error(`second caster is ${s}`);
        return true;
      },
      5000,
      'second caster live',
    );
    await waitForMedia(viewer, PLAYER_PC, { what: 'viewer, still' });
    assert.equal(await second.evaluate(() => window.vesselPublisher.state), 'live');
    assert.equal(await first.evaluate(() => window.vesselPublisher.state), 'stopped');

    for (const p of [viewer, second, first]) await h.closePage(p);
  }),
);

test('i: the viewer gets the camera\'s full 1280x720 with a small jitter buffer', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const live = liveName('i');
    const caster = await openCaster(live);
    const settings = await caster.evaluate(() => {
      const t = document.getElementById('preview').srcObject.getVideoTracks()[0];
      return t.getSettings();
    });
    assert.deepEqual([settings.width, settings.height], [1280, 720], 'cast page captures 1280x720');
    await goLive(caster);
    const viewer = await h.open(`/play/${live}`, `play ${live}`);
    await waitForMedia(viewer, PLAYER_PC);

    // Chromium starts low and raises the resolution as the bandwidth estimate grows: this needs
    // working congestion-control feedback from the server.
    const full = await waitFor(
      async () => {
        const s = await rtcStats(viewer, PLAYER_PC);
        return s.video?.frameWidth >= 1280 && s;
      },
      60000,
      'decoded frames of 1280 pixels wide',
      1000,
    );
    h.note(`full resolution: ${JSON.stringify(full.video)}`);
    // The <video> element takes the new size with the next frame it renders: wait for it.
    const size = () => viewer.evaluate(() => [document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]);
    await waitFor(async () => (await size())[0] >= 1280, 5000, '<video> showing the full size', 100).catch(() => {});
    assert.deepEqual(await size(), [1280, 720], '<video> shows 1280x720');

    // Video delay: the jitter buffer must stay small (wrong RTCP sender reports grow it).
    const jitter = () =>
      viewer.evaluate(async () => {
        for (const s of (await window.vesselPlayer.pc.getStats()).values()) {
          if (s.type === 'inbound-rtp' && s.kind === 'video') return [s.jitterBufferDelay, s.jitterBufferEmittedCount];
        }
        return null;
      });
    const [d1, n1] = await jitter();
    await waitForMedia(viewer, PLAYER_PC, { frames: 60, what: 'viewer, 60 more frames' });
    const [d2, n2] = await jitter();
    const avgMs = ((d2 - d1) / (n2 - n1)) * 1000;
    h.note(`video jitter buffer: ${avgMs.toFixed(1)} ms per frame`);
    assert.ok(avgMs < 300, `video jitter buffer delay ${avgMs.toFixed(1)} ms`);

    await h.closePage(viewer);
    await h.closePage(caster);
  }),
);

test('j: an H264 caster (/cast/{live}?codec=H264) reaches viewers as H264', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    const live = liveName('j');
    const caster = await openCaster(live, '?codec=H264');
    await goLive(caster);
    const viewer = await h.open(`/play/${live}`, `play ${live}`);
    const stats = await waitForMedia(viewer, PLAYER_PC, { what: 'H264 viewer' });
    assert.equal(stats.video.codec, 'video/H264');

    await h.closePage(viewer);
    await h.closePage(caster);
  }),
);

test('k: vessel.js API: events, stop() deletes the session, bad names and 4xx answers fail cleanly', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    const live = liveName('k');
    const page = await h.open('/', 'sdk');
    const result = await page.evaluate(async (live) => {
      const { play, publish, LIVE_NAME } = await import('/vessel.js');
      const out = {};
      try {
        play('bad name!');
      } catch (err) {
        out.badName = err.name;
      }
      out.nameRule = LIVE_NAME.test('a'.repeat(64)) && !LIVE_NAME.test('a'.repeat(65));

      // A 4xx answer (here: a server path that does not exist) is final: state "failed".
      const lost = play(live, { server: `${location.origin}/no-such-prefix` });
      out.failed = await new Promise((resolve) => {
        const errors = [];
        lost.on('error', (e) => errors.push(e.status));
        lost.on('state', (s) => s === 'failed' && resolve({ state: s, statuses: errors }));
        setTimeout(() => resolve({ state: lost.state, statuses: errors }), 10000);
      });

      // Events in order, viewers counted, stop() resolves after the DELETE.
      const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      const states = [];
      const publisher = publish(live, stream);
      publisher.on('state', (s) => states.push(`publisher:${s}`));
      await new Promise((r) => publisher.on('state', (s) => s === 'live' && r()));
      const player = play(live);
      player.on('state', (s) => states.push(`player:${s}`));
      const gotStream = new Promise((r) => player.on('stream', r));
      await new Promise((r) => player.on('viewers', (n) => n === 1 && r()));
      await new Promise((r) => (player.state === 'playing' ? r() : player.on('state', (s) => s === 'playing' && r())));
      out.streamTracks = (await gotStream).getTracks().map((t) => t.kind).sort();
      out.publisherViewers = await new Promise((r) => (publisher.viewers === 1 ? r(1) : publisher.on('viewers', r)));
      await player.stop();
      out.afterPlayerStop = await (await fetch(`/api/lives/${live}`)).json();
      await publisher.stop();
      out.afterPublisherStop = await (await fetch(`/api/lives/${live}`)).json();
      out.states = states;
      out.finalStates = [publisher.state, player.state];
      stream.getTracks().forEach((t) => t.stop());
      return out;
    }, live);
    h.note(`sdk: ${JSON.stringify(result)}`);

    assert.equal(result.badName, 'TypeError');
    assert.equal(result.nameRule, true);
    assert.equal(result.failed.state, 'failed');
    assert.ok(result.failed.statuses.every((s) => s >= 400 && s < 500) && result.failed.statuses.length > 0);
    assert.deepEqual(result.streamTracks, ['audio', 'video']);
    assert.equal(result.publisherViewers, 1);
    // `viewersHere`: this node's viewer sessions (in a cluster, `viewers` is every node's).
    assert.deepEqual(result.afterPlayerStop, { live, onAir: true, viewers: 0, viewersHere: 0, warnings: [] });
    assert.deepEqual(result.afterPublisherStop, { live, onAir: false, viewers: 0, viewersHere: 0, warnings: [] });
    assert.deepEqual(result.states, ['publisher:live', 'player:playing', 'player:stopped', 'publisher:stopped']);
    assert.deepEqual(result.finalStates, ['stopped', 'stopped']);

    await h.closePage(page);
  }),
);

/**
 * Serves, on another origin (same loopback address, another port), a page that imports the SDK
 * from `sdkUrl` ('/sdk.js' is web/vessel.js served by this other origin) as `window.vessel`.
 */
async function otherOrigin(sdkUrl) {
  const server = http.createServer((req, res) => {
    if (req.url === '/sdk.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' });
      res.end(fs.readFileSync(path.join(REPO, 'web/vessel.js')));
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(`<!doctype html><title>embed</title><video id="video" autoplay muted playsinline></video>
      <script type="module">
        import * as vessel from '${sdkUrl}';
        window.vessel = vessel;
      </script>`);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

/** Publishes and plays `live` from `page` (window.vessel), with extra options. */
async function publishAndPlay(page, live, options) {
  await page.evaluate(
    ({ live, options }) =>
      navigator.mediaDevices.getUserMedia({ video: true, audio: true }).then((stream) => {
        window.vesselPublisher = window.vessel.publish(live, stream, options);
        window.vesselPlayer = window.vessel.play(live, { ...options, video: document.getElementById('video') });
      }),
    { live, options },
  );
  await waitForMedia(page, PLAYER_PC, { what: 'cross-origin player' });
  assert.equal(await page.evaluate(() => window.vesselPublisher.state), 'live');
  assert.match(
    await page.evaluate(() => window.vesselPlayer._layerUrl ?? ''),
    new RegExp(`/whep/${live}/[^/]+/layer$`),
    'the WHEP answer\'s Link (layer extension) is readable cross-origin (Access-Control-Expose-Headers)',
  );
  await waitInPage(page, 'window.vesselPlayer.viewers === 1 && window.vesselPublisher.viewers === 1', 10000, 'viewer counts through cross-origin SSE');
}

test('l: an app on another origin uses WHIP/WHEP/SSE cross-origin (CORS; Location, Link with the layer URL and the ICE servers exposed; /api/ice-servers)', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    const live = liveName('l');
    const other = await otherOrigin('/sdk.js');
    try {
      const page = await h.open('/', 'embed');
      await page.goto(other.url);
      await waitInPage(page, 'window.vessel', 10000, 'SDK loaded');
      const raw = await page.evaluate(async ({ server, live }) => {
        const pc = new RTCPeerConnection();
        pc.addTransceiver('audio', { direction: 'recvonly' });
        pc.addTransceiver('video', { direction: 'recvonly' });
        await pc.setLocalDescription(await pc.createOffer());
        const res = await fetch(`${server}/whep/${live}`, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
        const location = res.headers.get('Location');
        const link = res.headers.get('Link');
        const del = location ? (await fetch(new URL(location, server), { method: 'DELETE' })).status : null;
        pc.close();
        const ice = await (await fetch(`${server}/api/ice-servers`)).json();
        return { status: res.status, location, link, del, ice };
      }, { server: h.url, live });
      assert.equal(raw.status, 201);
      // RFC 9725 §4.6 ICE servers in the answer's Link header, readable cross-origin, and the
      // same servers from /api/ice-servers (CORS).
      assert.match(raw.link ?? '', /<stun:[^>]+>; rel="ice-server"/, `Link: ${raw.link}`);
      assert.match(raw.link ?? '', /<turn:[^>]+\?transport=udp>; rel="ice-server"; username="[^"]+"; credential="[^"]+"; credential-type="password"/, `Link: ${raw.link}`);
      const turnUrls = raw.ice.iceServers.filter((s) => s.username && s.credential).flatMap((s) => s.urls);
      assert.ok(turnUrls.length > 0 && turnUrls.every((u) => raw.link.includes(`<${u}>`)), `/api/ice-servers ${JSON.stringify(raw.ice)} matches Link ${raw.link}`);
      assert.match(raw.location ?? '', new RegExp(`^(${h.url})?/whep/${live}/.+`), 'Location readable cross-origin (Access-Control-Expose-Headers)');
      assert.equal(raw.del, 200, 'cross-origin DELETE allowed');

      await publishAndPlay(page, live, { server: h.url });
      await h.closePage(page);
    } finally {
      other.close();
    }
  }),
);

test('m: a page on another origin imports vessel.js from the server itself (no `server` option needed)', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    const live = liveName('m');
    const other = await otherOrigin(`${h.url}/vessel.js`);
    try {
      const page = await h.open('/', 'embed');
      await page.goto(other.url);
      await waitInPage(page, 'window.vessel', 10000, `import of ${h.url}/vessel.js from ${other.url} (needs Access-Control-Allow-Origin on /vessel.js)`);
      await publishAndPlay(page, live, {});
      await h.closePage(page);
    } finally {
      other.close();
    }
  }),
);

/** Waits until the page's outbound video and audio advance (frames encoded, packets sent). */
async function waitForSending(page, pcExpr, { frames = 20, packets = 20, timeoutMs = 20000, what = pcExpr } = {}) {
  const base = await rtcStats(page, pcExpr);
  return waitFor(
    async () => {
      const s = await rtcStats(page, pcExpr);
      return (
        s.id === base.id &&
        s.sent.video?.framesEncoded >= (base.sent.video?.framesEncoded ?? 0) + frames &&
        s.sent.video?.packetsSent >= (base.sent.video?.packetsSent ?? 0) + packets &&
        s.sent.audio?.packetsSent >= (base.sent.audio?.packetsSent ?? 0) + packets &&
        s
      );
    },
    timeoutMs,
    `${what}: ${frames} more video frames encoded, ${packets} more video and audio packets sent`,
  );
}

/** Waits for the selected candidate pair of `pcExpr` in `page`. */
function waitPair(page, pcExpr, what) {
  return waitFor(() => selectedPair(page, pcExpr), 10000, `${what}: a selected candidate pair`);
}

test('v: caster and viewer forced through the built-in TURN server (?relay=1, iceTransportPolicy "relay") send and decode', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('v');
    const caster = await openCaster(live, '?relay=1');
    await goLive(caster);
    const viewer = await h.open(`/play/${live}?relay=1`, `play ${live} (relay)`);
    await waitForMedia(viewer, PLAYER_PC, { what: 'viewer through the relay' });
    await waitForSending(caster, PUBLISHER_PC, { what: 'caster through the relay' });

    for (const [page, pc, who] of [[caster, PUBLISHER_PC, 'caster'], [viewer, PLAYER_PC, 'viewer']]) {
      const pair = await waitPair(page, pc, who);
      h.note(`${who}'s candidate pair: ${JSON.stringify(pair)}`);
      assert.equal(pair.local.type, 'relay', `${who} uses a relay candidate: ${JSON.stringify(pair)}`);
      assert.equal(pair.local.relayProtocol, 'udp', `${who} reaches TURN over UDP: ${JSON.stringify(pair)}`);
      // The SDK got the ICE servers from /api/ice-servers, with TURN credentials.
      const config = await page.evaluate((expr) => new Function(`return (${expr})`)().getConfiguration(), pc);
      assert.equal(config.iceTransportPolicy, 'relay');
      const turn = config.iceServers.find((s) => [s.urls].flat().some((u) => u.startsWith('turn:')));
      assert.ok(turn?.username && turn?.credential, `TURN server with credentials: ${JSON.stringify(config.iceServers)}`);
    }
    // The pages show how the media goes.
    await waitInPage(viewer, `document.getElementById('quality').dataset.candidate === 'relay'`, 5000, 'play page shows "relay"');
    assert.match(await viewer.textContent('#quality'), / · relay udp$/);
    await waitInPage(caster, `document.getElementById('route').textContent === 'relay udp'`, 5000, 'cast page shows "relay udp"');

    // /api/ice-servers from the page: a usable RTCConfiguration fragment, not cached.
    const ice = await viewer.evaluate(async () => {
      const res = await fetch('/api/ice-servers');
      return { cacheControl: res.headers.get('Cache-Control'), body: await res.json() };
    });
    assert.equal(ice.cacheControl, 'no-store');
    const urls = ice.body.iceServers.flatMap((s) => [s.urls].flat());
    const host = new URL(h.url).hostname;
    assert.ok(urls.some((u) => u.startsWith(`stun:${host}:`)), `a STUN URL: ${urls}`);
    assert.ok(urls.some((u) => /^turn:.*\?transport=udp$/.test(u)) && urls.some((u) => /^turn:.*\?transport=tcp$/.test(u)), `TURN over UDP and TCP: ${urls}`);

    await h.closePage(viewer);
    await h.closePage(caster);
  }),
);

test('w: vessel.js ICE options: fetches the ICE servers before every connection (fresh credentials), not with explicit iceServers, and connects without them when the fetch fails', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('w');
    const page = await h.open('/', 'sdk ice');
    let iceRequests = 0;
    page.on('request', (r) => {
      if (new URL(r.url()).pathname === '/api/ice-servers') iceRequests++;
    });
    const warnings = [];
    page.on('console', (m) => m.type() === 'warning' && warnings.push(m.text()));

    const r = await page.evaluate(async (live) => {
      const { play, publish } = await import('/vessel.js');
      const out = { errors: [] };
      for (const bad of [{ iceTransportPolicy: 'none' }, { iceServers: { urls: 'stun:x' } }]) {
        try {
          play(live, bad);
          out.errors.push(null);
        } catch (err) {
          out.errors.push(err.name);
        }
      }
      const whenState = (h, state) => new Promise((r) => (h.state === state ? r() : h.on('state', (s) => s === state && r())));
      const servers = (h) => h.pc.getConfiguration().iceServers;

      // Explicit [] (no STUN/TURN): nothing fetched, direct connection.
      const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      const publisher = publish(live, stream, { iceServers: [] });
      window.vesselPublisher = publisher;
      await whenState(publisher, 'live');
      out.publisherServers = servers(publisher);
      out.publisherCandidate = await publisher.candidate();

      // Default: the server's, fetched per connection.
      const player = play(live);
      window.vesselPlayer = player;
      await whenState(player, 'playing');
      const first = player.pc;
      out.firstServers = servers(player);
      await player._reconnect(new Error('test: reconnect'));
      await new Promise((r) => {
        const check = () => (player.pc !== first && player.state === 'playing' ? r() : setTimeout(check, 100));
        check();
      });
      out.secondServers = servers(player);
      out.playerStats = await new Promise((r) => player.on('stats', r));
      await player.stop();
      return out;
    }, live);
    h.note(`sdk ice: ${JSON.stringify(r)}`);
    assert.deepEqual(r.errors, ['TypeError', 'TypeError'], 'bad iceTransportPolicy / iceServers throw');
    assert.deepEqual(r.publisherServers, []);
    assert.equal(r.publisherCandidate?.type, 'host', `publisher.candidate(): ${JSON.stringify(r.publisherCandidate)}`);
    assert.equal(r.publisherCandidate?.transport, 'udp');
    const turnUser = (servers) => servers.find((s) => s.username)?.username;
    assert.ok(turnUser(r.firstServers), `TURN credentials: ${JSON.stringify(r.firstServers)}`);
    assert.ok(turnUser(r.secondServers) && turnUser(r.secondServers) !== turnUser(r.firstServers), 'new TURN credentials for the new connection');
    assert.equal(iceRequests, 2, 'one /api/ice-servers request per player connection, none for iceServers: []');
    assert.ok(r.playerStats.candidate?.type, `stats.candidate: ${JSON.stringify(r.playerStats.candidate)}`);

    // /api/ice-servers unreachable: a warning, and the player still plays (host candidates).
    await page.route('**/api/ice-servers', (route) => route.abort());
    const degraded = await page.evaluate(async (live) => {
      const { play } = await import('/vessel.js');
      const video = Object.assign(document.createElement('video'), { muted: true, autoplay: true, playsInline: true });
      document.body.append(video);
      const player = play(live, { video });
      window.vesselPlayer = player;
      await new Promise((r) => player.on('state', (s) => s === 'playing' && r()));
      return { servers: player.pc.getConfiguration().iceServers };
    }, live);
    assert.deepEqual(degraded.servers, []);
    await waitForMedia(page, PLAYER_PC, { what: 'player without ICE servers' });
    assert.ok(warnings.some((w) => /cannot get the ICE servers/.test(w)), `a console warning: ${JSON.stringify(warnings)}`);

    await page.evaluate(() => Promise.all([window.vesselPlayer.stop(), window.vesselPublisher.stop()]));
    await h.closePage(page);
  }),
);

test('y: behind a 1:1 NAT (--public-ip, an address this host cannot reach): relayed caster and viewer still meet, since TURN hands packets to the SFU by its local address', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    // 203.0.113.7 (TEST-NET-3) is what the candidates announce; the test namespace has no route
    // to it, so only the relay's local route to the media socket can carry the media.
    // --open: with a non-loopback --public-ip, casting would need a stream key.
    const nat = await new VesselServer(h.log).start({ publicIps: ['203.0.113.7'], extraArgs: ['--open'] });
    try {
      const live = liveName('y');
      const caster = await h.open(`/cast/${live}?relay=1`, `cast ${live} (1:1 NAT)`, { base: nat.url });
      await waitInPage(caster, `!document.getElementById('golive').disabled`, 15000, 'camera ready');
      await goLive(caster);
      const viewer = await h.open(`/play/${live}?relay=1`, `play ${live} (1:1 NAT)`, { base: nat.url });
      await waitForMedia(viewer, PLAYER_PC, { what: 'viewer behind the relay' });
      await waitForSending(caster, PUBLISHER_PC, { what: 'caster behind the relay' });
      for (const [page, pc, who] of [[caster, PUBLISHER_PC, 'caster'], [viewer, PLAYER_PC, 'viewer']]) {
        const pair = await waitPair(page, pc, who);
        assert.equal(pair.local.type, 'relay', `${who}: ${JSON.stringify(pair)}`);
        assert.match(pair.remote.address, /^203\.0\.113\.7:\d+$/, `${who} talks to the announced address: ${JSON.stringify(pair)}`);
      }
      await h.closePage(viewer);
      await h.closePage(caster);
    } finally {
      await nat.stop();
    }
  }),
);
