// The seed's socket.io "Vessel" protocol (mediasoup-client dialect) at path /media: the seed's
// unmodified client (mediasoup/VesselClient.ts, bundled with esbuild together with
// socket.io-client and mediasoup-client, injected into a page of Vessel's origin), the tests' own
// mediasoup-client code for what the seed's client cannot do (a `live` query, audio), WHIP/WHEP
// pages on the other side, and the protocol's answers from Node (ms4).
//
// The protocol: the client emits `<name>` with one argument (null when there is none) and takes
// the first `re:<name>` event as the answer; a refused request answers `{error: "..."}`.
// A `live` query parameter of the socket.io handshake selects the live (default `demo`).
// Assertions are on getStats (frames encoded / decoded, audio packets), never on sleeps alone.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { validateAndNormalizeRtpCapabilities } from 'mediasoup-client/ortc';
import { io } from 'socket.io-client';
import { Harness, liveName, rtcStats, waitFor, waitForMedia, waitForVideo, waitInPage } from './helpers.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ENTRY = path.join(HERE, 'mediasoup/entry.ts');

const PLAYER_PC = 'window.vesselPlayer && window.vesselPlayer.pc';
/** The seed's client in a page (`window.vc`): its video producer's sender, its consumer's receiver. */
const SEED_SENDER = 'window.vc && window.vc.videoProducer && window.vc.videoProducer.rtpSender';
const SEED_RECEIVER = 'window.vc && window.vc.consumer && window.vc.consumer.rtpReceiver';
/** The tests' own clients (installMsClient): the send / recv transports' RTCPeerConnections. */
const PUB_PC = 'window.pub && window.pub.transport.handler._pc';
const SUB_PC = 'window.sub && window.sub.transport.handler._pc';

/** @type {Harness} */
let h;

before(async () => {
  h = await Harness.start();
});

after(async () => {
  await h?.close();
});

let bundled;
/** entry.ts bundled once (IIFE): window.VesselClient, window.SocketIO, window.mediasoupClient. */
function bundle() {
  bundled ??= (async () => {
    const t0 = performance.now();
    const result = await esbuild.build({
      entryPoints: [ENTRY],
      bundle: true,
      format: 'iife',
      platform: 'browser',
      target: 'chrome120',
      write: false,
      logLevel: 'error',
    });
    const text = result.outputFiles[0].text;
    h.note(`esbuild: ${ENTRY} bundled in ${Math.round(performance.now() - t0)} ms (${text.length} bytes)`);
    return text;
  })();
  return bundled;
}

/**
 * Runs in the page: `window.msTrace(socket, tag)` logs every socket.io event both ways to the
 * console (the harness keeps it for failure reports); `window.msClient` is the tests' own
 * mediasoup-client code for the protocol.
 */
function installMsClient() {
  window.msTraceLog = [];
  window.msTrace = (socket, tag) => {
    const log = (dir, name, args) => {
      const text = `${tag} ${dir} ${name} ${JSON.stringify(args).slice(0, 300)}`;
      window.msTraceLog.push(text);
      console.log(text);
    };
    socket.onAnyOutgoing((name, ...args) => log('->', name, args));
    socket.onAny((name, ...args) => log('<-', name, args));
    socket.on('connect', () => log('--', 'connect', [socket.id]));
    socket.on('connect_error', (e) => log('--', 'connect_error', [e.message]));
    socket.on('disconnect', (reason) => log('--', 'disconnect', [reason]));
  };

  /**
   * The seed's connectToVesselServer('/media'), traced; its socket retries forever (socket.io's
   * default), so the first connect_error ends the attempt here.
   */
  window.seedConnect = async (vc, tag) => {
    const connecting = vc.connectToVesselServer('/media');
    const { socket } = vc;
    window.msTrace(socket, tag);
    let onError;
    try {
      await Promise.race([
        connecting,
        new Promise((_, reject) => {
          onError = (e) => reject(new Error(`${tag}: the seed's socket.io connect to /media: ${e.message}`));
          socket.once('connect_error', onError);
        }),
      ]);
    } catch (err) {
      socket.disconnect();
      throw err;
    } finally {
      socket.off('connect_error', onError);
    }
  };

  const connect = async (live, tag) => {
    const socket = window.SocketIO({ path: '/media', autoConnect: false, reconnection: false, query: { live } });
    window.msTrace(socket, tag);
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('connect_error', (e) => reject(new Error(`${tag}: socket.io connect to /media: ${e.message}`)));
      socket.connect();
    });
    return socket;
  };

  /** emit(name, data), then the first re:name; `{error}` rejects. */
  const request = (socket, name, data = null, timeoutMs = 10000) =>
    new Promise((resolve, reject) => {
      const onReply = (reply) => {
        clearTimeout(timer);
        if (reply && typeof reply === 'object' && 'error' in reply) reject(new Error(`${name}: the server answered ${JSON.stringify(reply)}`));
        else resolve(reply);
      };
      const timer = setTimeout(() => {
        socket.off(`re:${name}`, onReply);
        reject(new Error(`${name}: no re:${name} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once(`re:${name}`, onReply);
      socket.emit(name, data);
    });

  const loadDevice = async (socket) => {
    const device = new window.mediasoupClient.Device();
    await device.load({ routerRtpCapabilities: await request(socket, 'routerCapabilities') });
    return device;
  };

  window.msClient = {
    connect,
    request,

    /** The seed's publish, plus the microphone on the same send transport. */
    async publish(live) {
      const socket = await connect(live, `pub ${live}`);
      const device = await loadDevice(socket);
      const options = await request(socket, 'createProducerTransport');
      const transport = device.createSendTransport(options);
      transport.on('connect', ({ dtlsParameters }, ok, fail) => {
        request(socket, 'connectProducerTransport', { transportId: options.id, dtlsParameters }).then(() => ok(), fail);
      });
      transport.on('produce', ({ kind, rtpParameters }, ok, fail) => {
        request(socket, 'produce', { transportId: transport.id, kind, rtpParameters }).then((id) => {
          if (typeof id === 'string' && id) ok({ id });
          else fail(new Error(`produce: expected a bare string (the producer id), got ${JSON.stringify(id)}`));
        }, fail);
      });
      const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      const video = await transport.produce({
        track: stream.getVideoTracks()[0],
        encodings: [{ maxBitrate: 100000 }, { maxBitrate: 300000 }, { maxBitrate: 900000 }],
      });
      const audio = await transport.produce({ track: stream.getAudioTracks()[0] });
      window.pub = { socket, device, transport, video, audio, stream };
      return { video: video.id, audio: audio.id, videoEncodings: video.rtpParameters.encodings.length };
    },

    /** A viewer of `live`: one recv transport, `count` consume requests, into a muted <video>. */
    async subscribe(live, count) {
      const socket = await connect(live, `sub ${live}`);
      const device = await loadDevice(socket);
      const options = await request(socket, 'createConsumerTransport');
      const transport = device.createRecvTransport(options);
      transport.on('connect', ({ dtlsParameters }, ok, fail) => {
        request(socket, 'connectConsumerTransport', { transportId: options.id, dtlsParameters }).then(() => ok(), fail);
      });
      const replies = [];
      const consumers = [];
      for (let i = 0; i < count; i++) {
        const reply = await request(socket, 'consume', device.rtpCapabilities);
        replies.push(reply);
        consumers.push(
          await transport.consume({ id: reply.id, producerId: reply.producerId, kind: reply.kind, rtpParameters: reply.rtpParameters }),
        );
      }
      const video = document.createElement('video');
      video.muted = true;
      video.autoplay = true;
      video.playsInline = true;
      video.srcObject = new MediaStream(consumers.map((c) => c.track));
      document.body.append(video);
      window.sub = { socket, device, transport, consumers, video };
      return replies.map((r) => ({ kind: r.kind, id: r.id, producerId: r.producerId, ssrc: r.rtpParameters?.encodings?.[0]?.ssrc }));
    },
  };
}

/** A page of Vessel's origin (`/`) with the bundle and the tests' client installed. */
async function msPage(name) {
  const content = await bundle();
  const page = await h.open('/', name);
  await page.addScriptTag({ content });
  await page.evaluate(installMsClient);
  assert.deepEqual(
    await page.evaluate(() => [typeof window.VesselClient, typeof window.SocketIO, typeof window.mediasoupClient?.Device]),
    ['function', 'function', 'function'],
    'the bundle defines VesselClient, SocketIO and mediasoupClient',
  );
  return page;
}

/**
 * Runs `fn(arg)` in the page (an async function, serialized: it sees only the page's globals),
 * failing after `timeoutMs` with the last socket.io events: the seed's client has no timeouts
 * of its own and waits forever for an answer.
 */
function inPage(page, what, timeoutMs, fn, arg = null) {
  return page.evaluate(
    async ({ src, arg, timeoutMs, what }) => {
      // eslint-disable-next-line no-new-func
      const f = new Function(`return (${src})`)();
      let timer;
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${what}: not done after ${timeoutMs} ms; last socket.io events: ${JSON.stringify((window.msTraceLog ?? []).slice(-8))}`)),
          timeoutMs,
        );
      });
      try {
        return await Promise.race([f(arg), timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
    { src: fn.toString(), arg, timeoutMs, what },
  );
}

/**
 * Waits until the sender `expr` names (an RTCPeerConnection or RTCRtpSender) encodes `frames`
 * more video frames and sends more video packets (and `audioPackets` more audio packets).
 */
async function waitForSent(page, expr, { frames = 20, audioPackets = 0, timeoutMs = 20000, what = expr } = {}) {
  const base = await waitFor(() => rtcStats(page, expr), 10000, `${what}: a sender to measure`);
  let last = base;
  try {
    const s = await waitFor(
      async () => {
        const s = await rtcStats(page, expr);
        last = s;
        return (
          s.id === base.id &&
          s.sent.video?.framesEncoded >= (base.sent.video?.framesEncoded ?? 0) + frames &&
          s.sent.video?.packetsSent > (base.sent.video?.packetsSent ?? 0) &&
          (!audioPackets || s.sent.audio?.packetsSent >= (base.sent.audio?.packetsSent ?? 0) + audioPackets) &&
          s
        );
      },
      timeoutMs,
      `${what}: ${frames} more video frames encoded and sent${audioPackets ? `, ${audioPackets} more audio packets sent` : ''}`,
      300,
    );
    h.note(`${what}: sending: ${JSON.stringify(s.sent)}`);
    return s;
  } catch (err) {
    err.message += `\n  sent at start: ${JSON.stringify(base.sent)}\n  sent at end:   ${JSON.stringify(last?.sent)}`;
    throw err;
  }
}

/** GET /api/lives/{live} → {live, onAir, viewers}. */
async function liveInfo(live) {
  const res = await fetch(`${h.url}/api/lives/${live}`);
  assert.equal(res.status, 200, `GET /api/lives/${live}`);
  return res.json();
}

/** Opens /cast/{live} and clicks Go live (WHIP, camera + microphone). */
async function castWithWhip(live) {
  const page = await h.open(`/cast/${live}?codec=VP8`, `cast ${live}`); // the router offers VP8 only
  await waitInPage(page, `!document.getElementById('golive').disabled`, 15000, 'camera ready (#golive enabled)');
  await page.click('#golive');
  await waitInPage(page, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'publisher state "live"');
  return page;
}

test('ms1: the seed\'s VesselClient as written: publish (video, simulcast) to demo; the seed\'s subscribe and a WHEP viewer decode it', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const caster = await msPage('seed cast');
    // next/pages/play/cast.tsx
    const published = await inPage(caster, 'the seed\'s cast flow', 30000, async () => {
      window.vc = new VesselClient();
      await window.seedConnect(window.vc, 'seed cast');
      await window.vc.requestRouterCapabilities();
      const stream = await window.vc.publish({ video: true, audio: true });
      const preview = document.createElement('video');
      preview.controls = true;
      preview.autoplay = true;
      preview.muted = true;
      preview.srcObject = stream;
      document.body.append(preview);
      const p = window.vc.videoProducer;
      return { kind: p.kind, id: p.id, encodings: p.rtpParameters.encodings.map((e) => e.rid ?? null), audioTracks: stream.getAudioTracks().length };
    });
    h.note(`seed caster produced ${JSON.stringify(published)}`);
    assert.equal(published.kind, 'video');
    assert.equal(typeof published.id, 'string', 'produce answered the producer id');
    assert.equal(published.encodings.length, 3, 'three simulcast encodings, as the seed asks');
    assert.equal(published.audioTracks, 0, 'the seed captures no audio (getUserMedia audio commented out)');
    await waitForSent(caster, SEED_SENDER, { what: 'seed caster (video producer\'s RTCRtpSender)' });
    await waitFor(async () => (await liveInfo('demo')).onAir, 10000, 'demo on air');

    // next/pages/play/receive.tsx
    const viewer = await msPage('seed receive');
    const consumed = await inPage(viewer, 'the seed\'s receive flow', 30000, async () => {
      window.vc = new VesselClient();
      await window.seedConnect(window.vc, 'seed receive');
      await window.vc.requestRouterCapabilities();
      const stream = await window.vc.subscribe();
      const video = document.createElement('video');
      video.muted = true;
      video.autoplay = true;
      video.srcObject = stream;
      document.body.append(video);
      return { kind: window.vc.consumer.kind, producerId: window.vc.consumer.producerId, tracks: stream.getTracks().map((t) => t.kind) };
    });
    h.note(`seed viewer consumed ${JSON.stringify(consumed)}`);
    assert.deepEqual(consumed, { kind: 'video', producerId: published.id, tracks: ['video'] }, 'the seed\'s consume gets the seed caster\'s video producer');
    const seen = await waitForVideo(viewer, SEED_RECEIVER, { frames: 20, what: 'seed viewer (consumer\'s RTCRtpReceiver)' });
    assert.equal(seen.video.codec, 'video/VP8');
    assert.ok(seen.video.frameWidth > 0, 'decoded frames have a size');

    const whep = await h.open('/play/demo', 'play demo');
    const played = await waitForVideo(whep, PLAYER_PC, { frames: 20, what: 'WHEP viewer of demo' });
    assert.ok(played.video.frameWidth > 0, 'decoded frames have a size');
  }));

test('ms2: a WHIP caster (/cast/{live}, audio + video) reaches a socket.io viewer (two consume requests)', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const live = liveName('ms2');
    await castWithWhip(live);

    const viewer = await msPage(`sub ${live}`);
    const replies = await inPage(viewer, 'socket.io viewer', 30000, (live) => window.msClient.subscribe(live, 2), live);
    h.note(`consume replies: ${JSON.stringify(replies)}`);
    assert.deepEqual(replies.map((r) => r.kind), ['video', 'audio'], 'the first consume gets the video, the second the audio');
    for (const r of replies) {
      assert.equal(typeof r.id, 'string', `consume (${r.kind}): a consumer id`);
      assert.equal(typeof r.producerId, 'string', `consume (${r.kind}): a producer id`);
      assert.equal(typeof r.ssrc, 'number', `consume (${r.kind}): rtpParameters.encodings[0].ssrc`);
    }
    assert.notEqual(replies[0].producerId, replies[1].producerId);
    const stats = await waitForMedia(viewer, SUB_PC, { what: 'socket.io viewer (recv transport)' });
    assert.equal(stats.video.codec, 'video/VP8');

    // A connected socket.io viewer counts as a viewer; its socket going ends its session.
    await waitFor(async () => (await liveInfo(live)).viewers === 1, 10000, `GET /api/lives/${live}: 1 viewer`);
    await viewer.evaluate(() => window.sub.socket.disconnect());
    await waitFor(async () => (await liveInfo(live)).viewers === 0, 10000, `GET /api/lives/${live}: 0 viewers after the socket disconnected`);
  }));

test('ms3: audio and video producers on one socket.io send transport reach a WHEP viewer', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const live = liveName('ms3');
    const caster = await msPage(`pub ${live}`);
    const produced = await inPage(caster, 'socket.io caster', 30000, (live) => window.msClient.publish(live), live);
    h.note(`produced ${JSON.stringify(produced)}`);
    assert.notEqual(produced.video, produced.audio, 'two producer ids');
    assert.equal(produced.videoEncodings, 3);
    await waitForSent(caster, PUB_PC, { audioPackets: 20, what: 'socket.io caster (send transport)' });
    await waitFor(async () => (await liveInfo(live)).onAir, 10000, `${live} on air`);

    const whep = await h.open(`/play/${live}`, `play ${live}`);
    const stats = await waitForMedia(whep, PLAYER_PC, { what: `WHEP viewer of ${live}` });
    assert.ok(stats.video.frameWidth > 0, 'decoded frames have a size');
  }));

// ---- ms4: the protocol from Node (socket.io-client over WebSocket, no browser) ----

const nodeSockets = new Set();

/** A socket.io connection to /media for `live`, from Node. */
async function nodeSocket(live) {
  const socket = io(h.url, { path: '/media', transports: ['websocket'], query: { live }, reconnection: false, timeout: 5000 });
  nodeSockets.add(socket);
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', (e) => reject(new Error(`socket.io connect to ${h.url}/media (live ${live}): ${e.message}`)));
  });
  return socket;
}

function closeNodeSockets() {
  for (const s of nodeSockets) s.disconnect();
  nodeSockets.clear();
}

/** emit(name, data), then the first `re:name` (whatever it holds). */
function ask(socket, name, data = null, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const onReply = (reply) => {
      clearTimeout(timer);
      resolve(reply);
    };
    const timer = setTimeout(() => {
      socket.off(`re:${name}`, onReply);
      reject(new Error(`no re:${name} within ${timeoutMs} ms after emitting ${name}`));
    }, timeoutMs);
    socket.once(`re:${name}`, onReply);
    socket.emit(name, data);
  });
}

function assertError(reply, what) {
  assert.ok(
    reply && typeof reply === 'object' && typeof reply.error === 'string' && reply.error.length > 0,
    `${what}: expected {error: "..."}, got ${JSON.stringify(reply)}`,
  );
  return reply.error;
}

/** What createProducerTransport / createConsumerTransport answer (mediasoup's TransportOptions). */
function assertTransportOptions(t, what) {
  const json = JSON.stringify(t);
  assert.equal(typeof t?.id, 'string', `${what}: id (${json})`);
  assert.ok(t.id.length > 0, `${what}: id`);
  const ice = t.iceParameters;
  assert.equal(typeof ice?.usernameFragment, 'string', `${what}: iceParameters.usernameFragment (${json})`);
  assert.equal(typeof ice.password, 'string', `${what}: iceParameters.password`);
  assert.equal(ice.iceLite, true, `${what}: iceParameters.iceLite`);
  assert.ok(Array.isArray(t.iceCandidates) && t.iceCandidates.length > 0, `${what}: iceCandidates (${json})`);
  for (const c of t.iceCandidates) {
    assert.equal(typeof c.foundation, 'string', `${what}: candidate foundation ${JSON.stringify(c)}`);
    assert.equal(typeof c.priority, 'number', `${what}: candidate priority ${JSON.stringify(c)}`);
    assert.ok(['udp', 'tcp'].includes(c.protocol), `${what}: candidate protocol ${JSON.stringify(c)}`);
    assert.ok(Number.isInteger(c.port) && c.port > 0, `${what}: candidate port ${JSON.stringify(c)}`);
    assert.equal(c.type, 'host', `${what}: candidate type ${JSON.stringify(c)}`);
  }
  assert.ok(
    t.iceCandidates.some((c) => (c.address ?? c.ip) === '127.0.0.1' && c.protocol === 'udp'),
    `${what}: a UDP candidate on 127.0.0.1 (${JSON.stringify(t.iceCandidates)})`,
  );
  assert.equal(t.dtlsParameters?.role, 'auto', `${what}: dtlsParameters.role (${json})`);
  const fp = t.dtlsParameters.fingerprints?.find((f) => f.algorithm === 'sha-256');
  assert.match(fp?.value ?? '', /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/i, `${what}: a sha-256 fingerprint (${json})`);
}

const FAKE_DTLS = { role: 'client', fingerprints: [{ algorithm: 'sha-256', value: Array(32).fill('AB').join(':') }] };

test('ms4a: routerCapabilities answers RTP capabilities that mediasoup-client accepts (opus, VP8 + rtx)', { timeout: 30000 }, () =>
  h.diagnose(async () => {
    try {
      const socket = await nodeSocket(liveName('ms4a'));
      const caps = await ask(socket, 'routerCapabilities');
      h.note(`routerCapabilities: ${JSON.stringify(caps)}`);
      assert.doesNotThrow(() => validateAndNormalizeRtpCapabilities(structuredClone(caps)), 'validateAndNormalizeRtpCapabilities');
      const codec = (mime) => caps.codecs.find((c) => c.mimeType.toLowerCase() === mime);
      assert.ok(codec('audio/opus'), 'opus');
      const vp8 = codec('video/vp8');
      assert.ok(vp8, 'VP8');
      const rtx = caps.codecs.find((c) => c.mimeType.toLowerCase() === 'video/rtx' && c.parameters?.apt === vp8.preferredPayloadType);
      assert.ok(rtx, 'rtx for VP8');
    } finally {
      closeNodeSockets();
    }
  }));

test('ms4b: createConsumerTransport answers ICE-lite parameters, 127.0.0.1 candidates and a sha-256 fingerprint; consume on an empty live is refused', { timeout: 30000 }, () =>
  h.diagnose(async () => {
    try {
      const live = liveName('ms4b');
      const socket = await nodeSocket(live);
      const caps = await ask(socket, 'routerCapabilities');
      const options = await ask(socket, 'createConsumerTransport');
      h.note(`createConsumerTransport: ${JSON.stringify(options)}`);
      assertTransportOptions(options, 'createConsumerTransport');
      // Nothing is cast on this live: the router's own capabilities stand in for a device's.
      const error = assertError(await ask(socket, 'consume', caps), `consume on the empty live ${live}`);
      assert.ok(error.includes(live), `the error names the live: ${JSON.stringify(error)}`);
    } finally {
      closeNodeSockets();
    }
  }));

test('ms4c: createProducerTransport answers transport options; connectProducerTransport with a foreign or unknown transportId is refused', { timeout: 30000 }, () =>
  h.diagnose(async () => {
    try {
      const a = await nodeSocket(liveName('ms4c-a'));
      const b = await nodeSocket(liveName('ms4c-b'));
      const ta = await ask(a, 'createProducerTransport');
      assertTransportOptions(ta, 'createProducerTransport');
      const tb = await ask(b, 'createProducerTransport');
      assertTransportOptions(tb, 'createProducerTransport (second socket)');
      assert.notEqual(ta.id, tb.id);
      assertError(await ask(b, 'connectProducerTransport', { transportId: ta.id, dtlsParameters: FAKE_DTLS }), 'connectProducerTransport with another socket\'s transportId');
      assertError(await ask(b, 'connectProducerTransport', { transportId: 'no-such-transport', dtlsParameters: FAKE_DTLS }), 'connectProducerTransport with an unknown transportId');
    } finally {
      closeNodeSockets();
    }
  }));

test('ms4d: produce before createProducerTransport is refused', { timeout: 30000 }, () =>
  h.diagnose(async () => {
    try {
      const socket = await nodeSocket(liveName('ms4d'));
      const rtpParameters = {
        mid: '0',
        codecs: [{ mimeType: 'video/VP8', payloadType: 96, clockRate: 90000, parameters: {}, rtcpFeedback: [] }],
        headerExtensions: [],
        encodings: [{ ssrc: 11111111 }],
        rtcp: { cname: 'ms4d', reducedSize: true },
      };
      const reply = await ask(socket, 'produce', { transportId: 'no-such-transport', kind: 'video', rtpParameters });
      assertError(reply, 'produce without a producer transport');
    } finally {
      closeNodeSockets();
    }
  }));
