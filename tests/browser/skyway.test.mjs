// The seed's SkyWay pages (next/pages/cast/[liveId].tsx, play/[liveId].tsx) with the unmodified npm
// `skyway-js` 4.4.5 bundle against Vessel: only `new Peer({key, host, port, secure})` changes (plus
// `config.iceServers` where a test forces TURN, and `credential` for a keyed live). Mesh rooms (the
// seed's: browsers connect to each other, Vessel only signals) and SFU rooms (one upload, Vessel's
// SFU fans it out). Media is checked on getStats of the tracks the page shows.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import path from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import { Harness, liveName, selectedPair, waitFor, waitForMedia, waitInPage } from './helpers.mjs';

const SKYWAY = path.join(path.dirname(new URL(import.meta.url).pathname), 'node_modules/skyway-js/dist/skyway.js');
/** The key a loopback-only Vessel accepts without --skyway-key. */
const KEY = 'vessel00-0000-4000-8000-000000000000';

/** @type {Harness} */
let h;

before(async () => {
  h = await Harness.start();
});

after(async () => {
  await h?.close();
});

// Mesh pages keep streaming to each other: close every window a test opened.
afterEach(async () => {
  for (const context of [...(h?.contexts ?? [])]) {
    h.contexts.delete(context);
    await context.close().catch(() => {});
  }
});

/**
 * A page (of Vessel's origin, or `base`) with the SDK loaded, every RTCPeerConnection kept in
 * `window.pcs`, and the seed's cast and play code as `window.seedCast` / `window.seedPlay`.
 */
async function skywayPage(name, { base } = {}) {
  const page = await h.open('/', name, { base });
  await page.evaluate(() => {
    window.pcs = [];
    const Native = window.RTCPeerConnection;
    window.RTCPeerConnection = function (...args) {
      const pc = new Native(...args);
      window.pcs.push(pc);
      return pc;
    };
    window.RTCPeerConnection.prototype = Native.prototype;
    window.peerErrors = [];
  });
  await page.addScriptTag({ path: SKYWAY });
  await page.evaluate(() => {
    // next/libs/peer.ts, with the three options a self-hosted server needs (and `config`
    // or `credential` only where a test says so).
    const createPeer = (o) => {
      const options = { key: o.key, host: o.host, port: o.port, secure: false };
      if (o.config) options.config = o.config;
      if (o.credential) options.credential = o.credential;
      const peer = new window.Peer(options);
      peer.on('error', (e) => window.peerErrors.push({ type: e.type, message: e.message }));
      return peer;
    };
    const opened = (peer) => new Promise((resolve) => peer.on('open', resolve));
    // cast/[liveId].tsx: getUserMedia, then on open joinRoom(liveId, {mode, stream}).
    window.seedCast = async (o) => {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { max: 1280 }, height: { max: 720 } }, audio: true });
      const peer = createPeer(o);
      window.peer = peer;
      window.peerId = await opened(peer);
      window.room = peer.joinRoom(o.room, { mode: o.mode, stream });
      return window.peerId;
    };
    // play/[liveId].tsx: on open joinRoom(liveId, {mode}); room.on('stream') shows it.
    window.seedPlay = async (o) => {
      const peer = createPeer(o);
      window.peer = peer;
      window.peerId = await opened(peer);
      window.streams = [];
      window.room = peer.joinRoom(o.room, { mode: o.mode });
      window.room.on('stream', (stream) => {
        window.streams.push({ id: stream.id, peerId: stream.peerId });
        let video = document.getElementById('seed-video');
        if (!video) {
          video = document.createElement('video');
          video.id = 'seed-video';
          video.muted = true;
          video.autoplay = true;
          video.controls = true;
          document.body.prepend(video);
        }
        video.srcObject = stream;
      });
      return window.peerId;
    };
    // getStats of the tracks the page shows, merged (one object per stream shown).
    window.shown = () => {
      const stream = document.getElementById('seed-video')?.srcObject;
      if (!stream) return null;
      if (window.__shown?.stream === stream) return window.__shown;
      const receivers = () => {
        const tracks = stream.getTracks();
        return window.pcs.flatMap((pc) => pc.getReceivers()).filter((r) => tracks.includes(r.track));
      };
      window.__shown = {
        stream,
        connectionState: 'connected',
        async getStats() {
          const merged = new Map();
          for (const r of receivers()) (await r.getStats()).forEach((v, k) => merged.set(k, v));
          return merged;
        },
      };
      return window.__shown;
    };
  });
  return page;
}

function peerOptions(room, mode, extra = {}) {
  return { key: KEY, host: '127.0.0.1', port: Number(new URL(h.url).port), room, mode, ...extra };
}

async function liveState(live) {
  return (await fetch(`${h.url}/api/lives/${live}`)).json();
}

/** Vessel's STUN/TURN for `config`, relay only. */
async function relayConfig() {
  const ice = await (await fetch(`${h.url}/api/ice-servers`)).json();
  return { iceServers: ice.iceServers, iceTransportPolicy: 'relay' };
}

test('k1: the seed\'s mesh pages: a caster and two players connect to each other, video and audio decode', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const room = liveName('mesh');
    const caster = await skywayPage(`cast ${room}`);
    const casterId = await caster.evaluate((o) => window.seedCast(o), peerOptions(room, 'mesh'));
    const players = [];
    for (const n of [1, 2]) {
      const p = await skywayPage(`play#${n} ${room}`);
      await p.evaluate((o) => window.seedPlay(o), peerOptions(room, 'mesh'));
      players.push(p);
    }
    for (const [i, p] of players.entries()) {
      await waitForMedia(p, 'window.shown()', { what: `mesh player #${i + 1}` });
      const streams = await p.evaluate(() => window.streams);
      assert.equal(streams[0].peerId, casterId, 'stream.peerId is the caster');
    }
    // Mesh media goes browser to browser: nothing is on air at Vessel.
    assert.equal((await liveState(room)).onAir, false);
    assert.deepEqual(await caster.evaluate(() => window.peerErrors), []);
  }));

test('k2: the same pages in mode \'sfu\': one upload, Vessel fans it out; the room is a live /play watches', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const room = liveName('sfu');
    const caster = await skywayPage(`cast ${room}`);
    const casterId = await caster.evaluate((o) => window.seedCast(o), peerOptions(room, 'sfu'));
    const players = [];
    for (const n of [1, 2]) {
      const p = await skywayPage(`play#${n} ${room}`);
      await p.evaluate((o) => window.seedPlay(o), peerOptions(room, 'sfu'));
      players.push(p);
    }
    for (const [i, p] of players.entries()) {
      await waitForMedia(p, 'window.shown()', { what: `SFU player #${i + 1}` });
      const streams = await p.evaluate(() => window.streams);
      assert.equal(streams.length, 1, 'one stream per publisher');
      assert.equal(streams[0].peerId, casterId, 'stream.peerId is the caster');
      assert.equal(await p.evaluate(() => window.pcs.length), 1, 'one connection, to Vessel');
    }
    // One upload, whatever the audience.
    assert.equal(await caster.evaluate(() => window.pcs.length), 1, 'the caster uploads once');
    const state = await waitFor(async () => {
      const s = await liveState(room);
      return s.onAir && s.viewers >= 2 && s;
    }, 10000, 'the room on air with its viewers counted');
    h.note(`live state: ${JSON.stringify(state)}`);

    // Vessel's own play page (WHEP) watches the same live.
    const viewer = await h.open(`/play/${room}`, `play page ${room}`);
    await waitForMedia(viewer, 'window.vesselPlayer && window.vesselPlayer.pc', { what: '/play of the SFU room' });
    await h.closePage(viewer);

    // A second member with a stream publishes too: every player gets a second stream, once.
    const guest = await skywayPage(`guest ${room}`);
    const guestId = await guest.evaluate((o) => window.seedCast(o), peerOptions(room, 'sfu'));
    for (const p of players) {
      await waitInPage(p, 'window.streams.length === 2', 20000, 'the guest\'s stream');
      await waitForMedia(p, 'window.shown()', { what: 'the guest, shown last' });
      assert.deepEqual((await p.evaluate(() => window.streams)).map((s) => s.peerId), [casterId, guestId]);
    }
    // Its live is the room's own business, not listed as a live of its own.
    const listed = (await (await fetch(`${h.url}/api/lives`)).json()).lives.map((l) => l.live);
    assert.ok(listed.includes(room) && !listed.some((l) => l.startsWith(`${room}~`)), JSON.stringify(listed));
  }));

test('k3: SFU: a player that joins before the caster gets the stream when the caster comes', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const room = liveName('early');
    const player = await skywayPage(`play ${room}`);
    await player.evaluate((o) => window.seedPlay(o), peerOptions(room, 'sfu'));
    // Its connection to Vessel is up before there is anything to watch.
    await waitInPage(player, `window.pcs[0] && window.pcs[0].connectionState === 'connected'`, 20000, 'the idle member connected');
    const caster = await skywayPage(`cast ${room}`);
    const casterId = await caster.evaluate((o) => window.seedCast(o), peerOptions(room, 'sfu'));
    await waitForMedia(player, 'window.shown()', { what: 'the early player' });
    assert.equal((await player.evaluate(() => window.streams))[0].peerId, casterId);
  }));

test('k4: SFU: a caster that leaves and comes back is a new stream for the player', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const room = liveName('back');
    const player = await skywayPage(`play ${room}`);
    await player.evaluate((o) => window.seedPlay(o), peerOptions(room, 'sfu'));
    let caster = await skywayPage(`cast#1 ${room}`);
    const first = await caster.evaluate((o) => window.seedCast(o), peerOptions(room, 'sfu'));
    await waitForMedia(player, 'window.shown()', { what: 'the first cast' });
    // The seed's cleanup: peer.disconnect().
    await caster.evaluate(() => window.peer.disconnect());
    await h.closePage(caster);
    await waitFor(async () => !(await liveState(room)).onAir, 15000, 'the room off air');
    caster = await skywayPage(`cast#2 ${room}`);
    const second = await caster.evaluate((o) => window.seedCast(o), peerOptions(room, 'sfu'));
    await waitInPage(player, 'window.streams.length === 2', 20000, 'a second stream event');
    await waitForMedia(player, 'window.shown()', { what: 'the second cast' });
    const streams = await player.evaluate(() => window.streams);
    assert.deepEqual(streams.map((s) => s.peerId), [first, second]);
    assert.notEqual(streams[0].id, streams[1].id);
    assert.equal(await player.evaluate(() => window.pcs.length), 1, 'on the same connection');
  }));

test('k5: relay only through Vessel\'s TURN: an SFU member and a mesh call', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const sfuRoom = liveName('relay-sfu');
    const caster = await skywayPage(`cast ${sfuRoom}`);
    await caster.evaluate((o) => window.seedCast(o), peerOptions(sfuRoom, 'sfu'));
    const player = await skywayPage(`relay play ${sfuRoom}`);
    await player.evaluate((o) => window.seedPlay(o), peerOptions(sfuRoom, 'sfu', { config: await relayConfig() }));
    await waitForMedia(player, 'window.shown()', { what: 'relay-only SFU member' });
    const pair = await selectedPair(player, 'window.pcs[0]');
    assert.equal(pair?.local?.type, 'relay', `through TURN: ${JSON.stringify(pair)}`);

    // Mesh, both ends forced to relay: two relays of Vessel's TURN talk to each other.
    const meshRoom = liveName('relay-mesh');
    const meshCaster = await skywayPage(`relay cast ${meshRoom}`);
    await meshCaster.evaluate((o) => window.seedCast(o), peerOptions(meshRoom, 'mesh', { config: await relayConfig() }));
    const meshPlayer = await skywayPage(`relay play ${meshRoom}`);
    await meshPlayer.evaluate((o) => window.seedPlay(o), peerOptions(meshRoom, 'mesh', { config: await relayConfig() }));
    await waitForMedia(meshPlayer, 'window.shown()', { what: 'relay-only mesh player' });
    const meshPair = await selectedPair(meshPlayer, 'window.pcs[0]');
    assert.equal(meshPair?.local?.type, 'relay', `through TURN: ${JSON.stringify(meshPair)}`);
    assert.equal(meshPair?.remote?.type, 'relay', `to the other relay: ${JSON.stringify(meshPair)}`);
  }));

test('k6: a page on another origin (credentialed polling), a wrong key, and the SDK\'s HTTP calls', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const room = liveName('xorigin');
    // localhost is another origin than 127.0.0.1: the SDK's XHR polling carries credentials.
    const other = `http://localhost:${new URL(h.url).port}`;
    const caster = await skywayPage(`cast ${room} (localhost)`, { base: other });
    const casterId = await caster.evaluate((o) => window.seedCast(o), peerOptions(room, 'sfu'));
    const player = await skywayPage(`play ${room} (localhost)`, { base: other });
    await player.evaluate((o) => window.seedPlay(o), peerOptions(room, 'sfu'));
    await waitForMedia(player, 'window.shown()', { what: 'cross-origin SFU player' });

    const polled = await fetch(`${h.url}/socket.io/?EIO=3&transport=polling&apiKey=${KEY}&token=t`, { headers: { Origin: other } });
    assert.equal(polled.headers.get('access-control-allow-origin'), other, 'the origin echoed, never *');
    assert.equal(polled.headers.get('access-control-allow-credentials'), 'true');

    // peer.fetchPeerExists and peer.listAllPeers (discovery off: the SDK's list-error).
    const found = await player.evaluate(async (id) => {
      const exists = await window.peer.fetchPeerExists(id);
      const listed = await new Promise((resolve) => window.peer.listAllPeers(resolve));
      return { exists, listed, errors: window.peerErrors };
    }, casterId);
    assert.equal(found.exists, true);
    assert.deepEqual(found.listed, []);
    assert.ok(found.errors.some((e) => e.type === 'list-error'), JSON.stringify(found.errors));

    // A key in the right shape that this server does not know: told, not left hanging.
    const stranger = await skywayPage('wrong key');
    const error = await stranger.evaluate(async (o) => {
      const peer = new window.Peer({ key: o.key, host: o.host, port: o.port, secure: false });
      return new Promise((resolve) => {
        peer.on('error', (e) => resolve({ type: e.type, message: e.message }));
        peer.on('open', () => resolve({ type: 'opened' }));
      });
    }, { ...peerOptions(room, 'sfu'), key: '11111111-2222-3333-4444-555555555555' });
    assert.equal(error.type, 'invalid-key', JSON.stringify(error));
  }));

test('k7: a keyed live: without its stream key the SFU caster is refused, with SkyWay\'s signed credential it goes live', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const room = liveName('keyed');
    const created = await fetch(`${h.url}/api/lives`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ live: room }),
    });
    assert.equal(created.status, 201, await created.clone().text());
    const { key: streamKey } = await created.json();

    const refused = await skywayPage(`cast ${room} without key`);
    await refused.evaluate((o) => window.seedCast(o), peerOptions(room, 'sfu'));
    await waitInPage(refused, `window.peerErrors.some((e) => e.type === 'authentication')`, 20000, 'an authentication error');
    const why = await refused.evaluate(() => window.peerErrors.find((e) => e.type === 'authentication').message);
    assert.match(why, /stream key/);
    assert.equal((await liveState(room)).onAir, false, 'nothing went on air');
    await h.closePage(refused);

    // What a site's backend computes for the caster page (SkyWay's scheme, with the stream key).
    const peerId = 'the-caster';
    const timestamp = Math.floor(Date.now() / 1000);
    const ttl = 3600;
    const authToken = createHmac('sha256', streamKey).update(`${timestamp}:${ttl}:${peerId}`).digest('base64');
    const caster = await skywayPage(`cast ${room} with credential`);
    await caster.evaluate(async (o) => {
      // As the seed's cast page, with the page's own peer id and the credential.
      const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      const peer = new window.Peer(o.peerId, { key: o.key, host: o.host, port: o.port, secure: false, credential: o.credential });
      peer.on('error', (e) => window.peerErrors.push({ type: e.type, message: e.message }));
      await new Promise((resolve) => peer.on('open', resolve));
      window.room = peer.joinRoom(o.room, { mode: 'sfu', stream });
    }, { ...peerOptions(room, 'sfu'), peerId, credential: { timestamp, ttl, authToken } });
    const player = await skywayPage(`play ${room}`);
    await player.evaluate((o) => window.seedPlay(o), peerOptions(room, 'sfu'));
    await waitForMedia(player, 'window.shown()', { what: 'the keyed room' });
    assert.equal((await player.evaluate(() => window.streams))[0].peerId, peerId);
    assert.deepEqual(await caster.evaluate(() => window.peerErrors), []);
  }));

test('k8: Vessel\'s cast page (three simulcast layers) casts the room\'s live: SFU members watch it as a publisher of the room', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const room = liveName('castpage');
    const cast = await h.open(`/cast/${room}`, `cast page ${room}`);
    await waitInPage(cast, `!document.getElementById('golive').disabled`, 15000, 'camera ready');
    await cast.click('#golive');
    await waitInPage(cast, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'on air');
    const player = await skywayPage(`play ${room}`);
    await player.evaluate((o) => window.seedPlay(o), peerOptions(room, 'sfu'));
    const stats = await waitForMedia(player, 'window.shown()', { what: 'a member watching the cast page' });
    const streams = await player.evaluate(() => window.streams);
    assert.equal(streams[0].peerId, `vessel:${room}`, 'a caster of another protocol');
    // The member gets one of the caster's layers, chosen for it (the cast page sends 1280x720
    // and two smaller ones).
    assert.ok(stats.video.frameWidth >= 320, JSON.stringify(stats.video));
    // The cast page stops: the member's stream goes with it, and back when it comes back.
    await cast.click('#stop');
    await waitFor(async () => !(await liveState(room)).onAir, 15000, 'the room off air');
    await cast.click('#golive');
    await waitInPage(player, 'window.streams.length === 2', 20000, 'a new stream for the new cast');
    await waitForMedia(player, 'window.shown()', { what: 'the cast page again' });
  }));
