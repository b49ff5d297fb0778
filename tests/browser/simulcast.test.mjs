// Simulcast and per-viewer adaptation, end to end in headless Chromium: the cast page publishes
// three layers (rids q/h/f: 320, 640 and 1280 wide from the 1280×720 fake camera); each viewer
// gets the best layer its link carries, or the one it caps itself at (setLayer / the play page's
// selector). One viewer runs in a second network namespace (veth 10.77.0.1 ↔ 10.77.0.2) whose
// link is throttled (tc tbf) or lossy (nft numgen random). Assertions are on getStats.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { liveName, rtcStats, selectedPair as pairOf, waitFor, waitInPage } from './helpers.mjs';
import { HOST_IP } from './netns.mjs';
import {
  LOW_WIDTH,
  MID_WIDTH,
  PLAYER_PC,
  TOP_WIDTH,
  VideoMeter,
  casterLayers,
  joinScenario,
  lossScenario,
  median,
  openViewer,
  startCaster,
  startEnv,
  throttleScenario,
  waitStable,
} from './simulcast-lib.mjs';

let env;
let h;
/** The live that tests n–q share, published by the cast page with three layers. */
let live;
let caster = null;

before(async () => {
  env = await startEnv();
  h = env.h;
  live = liveName('sim');
});

after(async () => {
  await env?.close();
});

/** The shared caster, (re)started if it is not live. */
async function sharedCaster() {
  const state = caster && (await caster.page.evaluate(() => window.vesselPublisher?.state).catch(() => null));
  if (state !== 'live') {
    if (caster) await h.closePage(caster.page);
    caster = await startCaster(h, live);
    h.note(`caster layers: ${JSON.stringify(caster.sending.map((l) => [l.rid, l.frameWidth, l.frameHeight]))}`);
  }
  return caster;
}

/** Waits until `meter`'s page decodes frames for which `cond(width)` holds. */
function waitWidth(meter, cond, what, timeoutMs = 20000) {
  return waitFor(
    async () => {
      const v = await meter.sample();
      return v.framesDecoded > 0 && cond(v.width) && v;
    },
    timeoutMs,
    what,
    250,
  );
}

test('n: the cast page sends three simulcast layers; a viewer gets 1280×720 and follows its layer choice (page selector and setLayer), across a reconnection', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const { page: castPage, sending } = await sharedCaster();
    assert.deepEqual(sending.map((l) => l.rid), ['q', 'h', 'f'], 'three rids, lowest first');
    assert.deepEqual(sending.map((l) => l.frameWidth), [LOW_WIDTH, MID_WIDTH, TOP_WIDTH], 'quarter, half and full width');
    const encodings = await castPage.evaluate(() => window.vesselPublisher.encodings);
    assert.deepEqual(encodings.map((e) => [e.rid, e.scaleResolutionDownBy, e.maxBitrate]), [['q', 4, 100000], ['h', 2, 300000], ['f', 1, 900000]]);

    const { page, meter } = await openViewer(h, live, { name: 'viewer' });
    // The page shows what it receives.
    await waitInPage(
      page,
      `document.getElementById('quality').dataset.width === '${TOP_WIDTH}' && Number(document.getElementById('quality').dataset.kbps) > 100`,
      10000,
      '#quality shows 1280 wide and the received bitrate',
    );
    const text = await page.textContent('#quality');
    assert.match(text, /^1280×720 · \d+ kbps · host udp$/, `#quality: ${text}`);

    // The server offers the layer extension.
    const layerUrl = await page.evaluate(() => window.vesselPlayer._layerUrl);
    assert.match(layerUrl ?? '', new RegExp(`/whep/${live}/[^/]+/layer$`), 'Link rel="urn:ietf:params:whep:ext:core:layer" in the answer');

    // Low, from the page's selector.
    const t0 = Date.now();
    await page.selectOption('#layer', 'low');
    const low = await waitWidth(meter, (w) => w === LOW_WIDTH, 'viewer at the low layer (320 wide)');
    h.note(`switch to low: ${Date.now() - t0} ms, ${JSON.stringify({ w: low.width, h: low.height })}`);
    assert.equal(low.height, 180);
    await waitInPage(page, `document.getElementById('quality').textContent.startsWith('320×180 · ')`, 5000, '#quality shows 320×180');

    // Medium, from the SDK.
    const tMedium = Date.now();
    assert.equal(await page.evaluate(() => window.vesselPlayer.setLayer('medium')), true, 'setLayer resolves true once the server applied it');
    await waitWidth(meter, (w) => w === MID_WIDTH, 'viewer at the medium layer (640 wide)');
    h.note(`switch to medium: ${Date.now() - tMedium} ms`);

    // Kept across the SDK's own reconnection.
    await page.evaluate(() => window.vesselPlayer.setLayer('low'));
    await waitWidth(meter, (w) => w === LOW_WIDTH, 'viewer at the low layer again');
    const before = await rtcStats(page, PLAYER_PC);
    await page.evaluate(() => window.vesselPlayer._reconnect(new Error('test: reconnect')));
    await waitFor(async () => (await rtcStats(page, PLAYER_PC))?.id !== before.id, 10000, 'a new peer connection');
    const again = await waitWidth(meter, (w) => w > 0, 'viewer decoding after the reconnection');
    await waitFor(
      async () => {
        const v = await meter.sample();
        // A new connection may start on another layer until the server applied the cap.
        return v.framesDecoded > 30 && v.width === LOW_WIDTH && v;
      },
      20000,
      'viewer at the low layer after reconnecting (layer remembered)',
    );
    h.note(`after reconnection first frames ${again.width} wide`);
    assert.equal(await page.inputValue('#layer'), 'low');

    // Back to auto → top layer.
    await page.selectOption('#layer', 'auto');
    const t1 = Date.now();
    await waitWidth(meter, (w) => w === TOP_WIDTH, 'viewer back at the top layer (auto)', 30000);
    h.note(`switch to auto (top): ${Date.now() - t1} ms`);

    // The layer endpoint's answers (contract with the server).
    const url = await page.evaluate(() => window.vesselPlayer._layerUrl);
    const post = (u, body) => fetch(u, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body }).then((r) => r.status);
    assert.equal(await post(url, '{"layer":"auto"}'), 204);
    assert.equal(await post(url, '{"layer":"best"}'), 400);
    assert.equal(await post(url, 'not json'), 400);
    assert.equal(await post(url.replace(/\/[^/]+\/layer$/, '/0123456789abcdef0123456789abcdef/layer'), '{"layer":"low"}'), 404);
    await assert.rejects(page.evaluate(() => window.vesselPlayer.setLayer('best')), /invalid layer/);

    await h.closePage(page);
  }),
);

test('o: a viewer throttled to 350 kbit/s settles on a lower layer and returns to the top when the limit is lifted; an unthrottled viewer stays on the top layer', { timeout: 150000 }, (t) => {
  if (!env.ns) return t.skip(env.nsReason);
  return h.diagnose(async () => {
    await sharedCaster();
    const free = await openViewer(h, live, { name: 'unthrottled viewer' });
    const slow = await openViewer(h, live, { name: 'throttled viewer', browser: env.nsBrowser, base: env.nsUrl });
    await slow.page.bringToFront();
    await waitStable([free.meter, slow.meter]);
    const r = await throttleScenario(h, env.ns, slow.meter, [free.meter]);
    h.note(`throttle: ${JSON.stringify({ ...r, timeline: undefined })}`);
    h.note(`throttle timeline: ${r.timeline.map((e) => `${e.ms}ms ${e.width}w ${e.kbps}kbps [${e.watched}]`).join(', ')}`);
    console.log(`# throttle ${r.rate}: lower layer after ${r.downMs} ms (settled ${r.settledMs} ms, ${r.low.width}x${r.low.height} at ${r.low.kbps} kbps, ${r.low.fpsWhileHeld} fps while held); top again ${r.upMs} ms after lifting`);
    assert.ok(r.low.width <= MID_WIDTH && r.low.maxWidthWhileHeld <= MID_WIDTH, `throttled viewer stays ≤ 640 wide: ${JSON.stringify(r.low)}`);
    assert.ok(r.low.kbps < 400, `throttled viewer receives < 400 kbps: ${r.low.kbps}`);
    assert.ok(r.low.fpsWhileHeld >= 5, `throttled viewer keeps decoding: ${r.low.fpsWhileHeld} fps`);
    assert.equal(r.top.width, TOP_WIDTH);
    assert.equal(r.watchedMinWidth, TOP_WIDTH, 'the unthrottled viewer stayed on the top layer');
    await h.closePage(slow.page);
    await h.closePage(free.page);
  });
});

test('p: with 5 % random loss on its path, a viewer keeps decoding (freezes, NACKs, retransmissions reported)', { timeout: 90000 }, (t) => {
  if (!env.ns) return t.skip(env.nsReason);
  if (env.nftReason) return t.skip(env.nftReason);
  return h.diagnose(async () => {
    await sharedCaster();
    const viewer = await openViewer(h, live, { name: 'lossy viewer', browser: env.nsBrowser, base: env.nsUrl });
    await viewer.page.bringToFront();
    // Start from a steady top layer (a new viewer's layer moves while its estimate settles).
    await waitStable([viewer.meter]);
    const r = await lossScenario(env.ns, viewer.meter, { percent: 5, seconds: 20 });
    h.note(`loss: ${JSON.stringify(r)}`);
    console.log(
      `# 5 % loss for ${r.durationS} s: ${r.fps} fps, frozen ${(r.frozenRatio * 100).toFixed(2)} % (${r.freezeCount} freezes, ${r.totalFreezesDurationS} s), ` +
        `${r.packetsLost} lost / ${r.packetsReceived} received, ${r.nackCount} NACKs, ${r.retransmittedPacketsReceived} retransmissions received`,
    );
    assert.ok(r.droppedByRule == null || r.droppedByRule > 0, 'the loss rule dropped packets');
    assert.ok(r.framesPerWindow.length >= 3 && r.framesPerWindow.every((n) => n > 0), `frames decoded in every 5 s window: ${r.framesPerWindow}`);
    assert.ok(r.fps > 10, `decoding at ${r.fps} fps`);
    assert.ok(r.frozenRatio < 0.1, `frozen ${(r.frozenRatio * 100).toFixed(2)} % of the time (< 10 %)`);
    assert.ok(r.nackCount > 0, 'the viewer sent NACKs');
    await h.closePage(viewer.page);
  });
});

test('t: a viewer on a network that drops all UDP plays over ICE-TCP; others keep UDP', { timeout: 90000 }, (t) => {
  if (!env.ns) return t.skip(env.nsReason);
  if (env.nftReason) return t.skip(env.nftReason);
  return h.diagnose(async () => {
    await sharedCaster();
    await env.ns.blockUdp();
    try {
      // ?turn=0: no STUN/TURN servers (iceServers: []), so the only way in is ICE-TCP to the
      // media port itself. With the server's TURN, the viewer might pick a relay over TURN-TCP
      // instead (that path is test x), and this test would no longer prove ICE-TCP works.
      const viewer = await openViewer(h, live, { name: 'UDP-blocked viewer', browser: env.nsBrowser, base: env.nsUrl, width: 0, query: '?turn=0' });
      await viewer.page.bringToFront();
      const pair = await selectedPair(viewer.page);
      h.note(`UDP-blocked viewer's candidate pair: ${JSON.stringify(pair)}`);
      assert.equal(pair.remote.protocol, 'tcp', `selected candidate pair runs over TCP: ${JSON.stringify(pair)}`);
      // Chromium's active ICE-TCP candidate shows up as prflx once connected (its port is only
      // known then); what matters is that it is not a relay.
      assert.equal(pair.local.protocol, 'tcp', `an ICE-TCP candidate: ${JSON.stringify(pair)}`);
      assert.notEqual(pair.local.type, 'relay', `directly to the media port, not relayed: ${JSON.stringify(pair)}`);
      await waitInPage(
        viewer.page,
        `document.getElementById('quality').dataset.transport === 'tcp' && document.getElementById('quality').dataset.candidate !== 'relay'`,
        5000,
        '#quality shows a direct TCP path',
      );
      const free = await openViewer(h, live, { name: 'viewer with UDP', width: 0 });
      const freePair = await selectedPair(free.page);
      assert.equal(freePair.remote.protocol, 'udp', `UDP is preferred when it works: ${JSON.stringify(freePair)}`);
      assert.equal(freePair.local.type, 'host', `and direct when it can be: ${JSON.stringify(freePair)}`);
      await h.closePage(viewer.page);
      await h.closePage(free.page);
    } finally {
      await env.ns.unblockUdp();
    }
  });
});

test('x: a viewer on a network that drops all UDP, forced through the TURN relay (?relay=1), plays over TURN-TCP', { timeout: 90000 }, (t) => {
  if (!env.ns) return t.skip(env.nsReason);
  if (env.nftReason) return t.skip(env.nftReason);
  return h.diagnose(async () => {
    await sharedCaster();
    await env.ns.blockUdp();
    try {
      const viewer = await openViewer(h, live, { name: 'UDP-blocked viewer through TURN', browser: env.nsBrowser, base: env.nsUrl, width: 0, query: '?relay=1' });
      await viewer.page.bringToFront();
      const pair = await selectedPair(viewer.page);
      h.note(`UDP-blocked relayed viewer's candidate pair: ${JSON.stringify(pair)}`);
      assert.equal(pair.local.type, 'relay', `through the TURN relay: ${JSON.stringify(pair)}`);
      assert.equal(pair.local.relayProtocol, 'tcp', `reaching TURN over TCP: ${JSON.stringify(pair)}`);
      // The TURN URL names the address this namespace reaches (--turn-public-addr).
      const turn = await viewer.page.evaluate(() => window.vesselPlayer.pc.getConfiguration().iceServers.flatMap((s) => [s.urls].flat()));
      assert.ok(turn.some((u) => u.startsWith(`turn:${HOST_IP}:`) && u.endsWith('?transport=tcp')), `TURN URLs: ${turn}`);
      const s0 = await viewer.meter.sample();
      await waitFor(async () => (await viewer.meter.sample()).framesDecoded >= s0.framesDecoded + 30, 15000, '30 more frames decoded through TURN-TCP');
      await waitInPage(viewer.page, `document.getElementById('quality').textContent.endsWith(' · relay tcp')`, 5000, '#quality shows "relay tcp"');
      await h.closePage(viewer.page);
    } finally {
      await env.ns.unblockUdp();
    }
  });
});

test('u: a viewer behind a NAT with fully random ports (nft masquerade fully-random) plays', { timeout: 90000 }, (t) => {
  if (!env.ns) return t.skip(env.nsReason);
  if (env.nftReason) return t.skip(env.nftReason);
  return h.diagnose(async () => {
    await sharedCaster();
    await env.ns.natFullyRandom();
    try {
      const viewer = await openViewer(h, live, { name: 'viewer behind NAT', browser: env.nsBrowser, base: env.nsUrl, width: 0 });
      const natted = await env.ns.natted();
      assert.ok(natted > 0, `the NAT rewrote the viewer's flows (${natted} packets)`);
      const pair = await selectedPair(viewer.page);
      h.note(`NATed viewer's candidate pair: ${JSON.stringify(pair)}`);
      assert.equal(pair.remote.protocol, 'udp', `plays over UDP through the NAT: ${JSON.stringify(pair)}`);
      // The page has the server's TURN too: the NAT must be crossed directly (the ICE-lite
      // server answers the address it sees), not by falling back to the relay.
      assert.notEqual(pair.local.type, 'relay', `directly, not through the TURN relay: ${JSON.stringify(pair)}`);
      await h.closePage(viewer.page);
    } finally {
      await env.ns.removeNat();
    }
  });
});

/** The candidate pair a page's player uses (waits until one is selected). */
function selectedPair(page) {
  return waitFor(() => pairOf(page, PLAYER_PC), 10000, 'a selected candidate pair');
}

test('q: join → first decoded frame, with the caster already live', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    await sharedCaster();
    const joins = await joinScenario(h, live, { samples: 3 });
    const med = median(joins.map((j) => j.firstFrameMs));
    console.log(`# join → first decoded frame: ${joins.map((j) => j.firstFrameMs).join(', ')} ms (median ${med} ms)`);
    assert.ok(joins.every((j) => j.firstFrameMs != null), `every join decoded a frame: ${JSON.stringify(joins)}`);
    assert.ok(med < 3000, `median join → first frame ${med} ms`);
  }),
);

test('r: vessel.js simulcast options: layers by track size, simulcast: false, custom layers; a caster without simulcast still reaches viewers', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const page = await h.open('/', 'sdk');
    const r = await page.evaluate(async () => {
      const { simulcastEncodings, DEFAULT_LAYERS, play, publish } = await import('/vessel.js');
      const track = (width, height) => ({ getSettings: () => ({ width, height }) });
      const rids = (t, o) => simulcastEncodings(t, o).map((e) => e.rid ?? null);
      const out = {
        defaults: DEFAULT_LAYERS.map((l) => [l.rid, l.scaleResolutionDownBy, l.maxBitrate]),
        hd: rids(track(1280, 720)),
        qhd: rids(track(960, 540)),
        vga: rids(track(640, 480)),
        small: simulcastEncodings(track(320, 240)),
        unknown: rids(track(undefined, undefined)),
        off: simulcastEncodings(track(1280, 720), { simulcast: false, video: { maxBitrate: 1e6 } }),
        topCapped: simulcastEncodings(track(1280, 720), { video: { maxBitrate: 2e6, maxFramerate: 20 } }),
        custom: simulcastEncodings(track(1280, 720), { layers: [{ rid: 'lo', scaleResolutionDownBy: 3, maxBitrate: 150000 }, { rid: 'hi' }] }),
      };
      out.errors = [];
      for (const bad of [{ layers: [] }, { layers: [{ rid: 'a b' }] }, { layers: [{ rid: 'a' }, { rid: 'a' }] }, { video: { maxBitrate: -1 } }]) {
        try {
          publish('x', new MediaStream(), bad);
          out.errors.push(null);
        } catch (err) {
          out.errors.push(err.name);
        }
      }
      try {
        play('x', { layer: 'best' });
      } catch (err) {
        out.errors.push(err.name);
      }
      return out;
    });
    h.note(`sdk: ${JSON.stringify(r)}`);
    assert.deepEqual(r.defaults, [['q', 4, 100000], ['h', 2, 300000], ['f', 1, 900000]]);
    assert.deepEqual(r.hd, ['q', 'h', 'f']);
    assert.deepEqual(r.qhd, ['q', 'h', 'f']);
    assert.deepEqual(r.vga, ['h', 'f'], 'Chromium drops the top layer of a 640×480 track: send ½ and full');
    assert.deepEqual(r.small, [{ maxBitrate: 900000 }], 'one encoding without rid for a small track');
    assert.deepEqual(r.unknown, ['q', 'h', 'f']);
    assert.deepEqual(r.off, [{ maxBitrate: 1e6 }]);
    assert.deepEqual(r.topCapped.map((e) => [e.maxBitrate, e.maxFramerate]), [[100000, 20], [300000, 20], [2e6, 20]]);
    assert.deepEqual(r.custom, [{ rid: 'lo', scaleResolutionDownBy: 3, maxBitrate: 150000 }, { rid: 'hi', scaleResolutionDownBy: 1 }]);
    assert.deepEqual(r.errors, ['TypeError', 'TypeError', 'TypeError', 'TypeError', 'TypeError']);
    await h.closePage(page);

    // The cast page without simulcast (?simulcast=0): one encoding, viewers still play it.
    const plain = liveName('nosim');
    const { page: castPlain } = await startCasterQuery(plain, '?simulcast=0');
    const layers = (await rtcStats(castPlain, 'window.vesselPublisher.pc')).sent.video.layers;
    assert.deepEqual(layers.map((l) => l.rid), [null], 'a single encoding without rid');
    const viewer = await openViewer(h, plain, { name: 'viewer of a caster without simulcast', width: 0 });
    const s = await viewer.meter.sample();
    // The viewer's layer choice is harmless with one layer.
    await viewer.page.selectOption('#layer', 'low');
    await waitFor(async () => (await viewer.meter.sample()).framesDecoded > s.framesDecoded + 30, 10000, 'still decoding after choosing "low" with a single layer');
    await h.closePage(viewer.page);
    await h.closePage(castPlain);
  }),
);

/** Opens /cast/{live}{query} and goes live (no layer check). */
async function startCasterQuery(name, query) {
  const page = await h.open(`/cast/${name}${query}`, `cast ${name}`);
  await waitInPage(page, `!document.getElementById('golive').disabled`, 15000, 'camera ready (#golive enabled)');
  await page.click('#golive');
  await waitInPage(page, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'publisher state "live"');
  await casterLayers(page, { layers: 1 });
  return { page };
}

test('s: an H264 caster (/cast/{live}?codec=H264) sends three H264 layers; a viewer switches between them', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    const name = liveName('h264sim');
    const { page: castPage, sending } = await startCaster(h, name, { query: '?codec=H264' });
    assert.deepEqual(sending.map((l) => [l.rid, l.codec]), [['q', 'video/H264'], ['h', 'video/H264'], ['f', 'video/H264']]);
    const viewer = await openViewer(h, name, { name: 'H264 viewer' });
    assert.equal((await viewer.meter.sample()).codec, 'video/H264');
    await viewer.page.selectOption('#layer', 'low');
    await waitWidth(viewer.meter, (w) => w === LOW_WIDTH, 'H264 viewer at the low layer (320 wide): the server must find H264 keyframes (SPS/PPS + IDR) of the new layer');
    await viewer.page.selectOption('#layer', 'auto');
    await waitWidth(viewer.meter, (w) => w === TOP_WIDTH, 'H264 viewer back at the top layer', 30000);
    await h.closePage(viewer.page);
    await h.closePage(castPage);
  }),
);
