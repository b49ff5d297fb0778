// The seed's PeerJS cast/receive flow (next/pages/live/cast.tsx, receive.tsx) with the unmodified
// npm `peerjs` client against Vessel's PeerServer at path /peer, with Vessel's ICE servers
// (never the public PeerJS cloud or public STUN).

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { Harness, waitForMedia, waitInPage } from './helpers.mjs';

const PEERJS = path.join(path.dirname(new URL(import.meta.url).pathname), 'node_modules/peerjs/dist/peerjs.min.js');

/** @type {Harness} */
let h;

before(async () => {
  h = await Harness.start();
});

after(async () => {
  await h?.close();
});

/** A page of Vessel's origin with peerjs loaded and a Peer opened as the seed opens it. */
async function peerPage(name) {
  const page = await h.open('/', name);
  await page.addScriptTag({ path: PEERJS });
  const port = new URL(h.url).port;
  await page.evaluate(async (port) => {
    // What the seed passed as `config`, with Vessel's STUN/TURN instead of Google's STUN.
    const config = await (await fetch('/api/ice-servers')).json();
    window.peer = new window.peerjs.Peer({ host: '127.0.0.1', port: Number(port), path: '/peer', config });
    window.peerId = await new Promise((resolve, reject) => {
      window.peer.on('open', resolve);
      window.peer.on('error', reject);
    });
  }, port);
  return page;
}

test('p1: the seed\'s PeerJS cast/receive: the caster calls the receiver\'s id, video and audio decode', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const receiver = await peerPage('receive');
    await receiver.evaluate(() => {
      // receive.tsx: answer without a stream, play what comes.
      window.peer.on('call', (call) => {
        window.call = call;
        call.answer();
        call.on('stream', (stream) => {
          const video = document.createElement('video');
          video.muted = true;
          video.autoplay = true;
          video.srcObject = stream;
          document.body.append(video);
        });
      });
    });
    const receiverId = await receiver.evaluate(() => window.peerId);
    assert.match(receiverId, /^[0-9a-f-]{36}$/, 'an id from GET /peer/peerjs/id');

    const caster = await peerPage('cast');
    await caster.evaluate(async (id) => {
      // cast.tsx: getUserMedia({video, audio}), then peer.call(id, stream).
      const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      window.outgoing = window.peer.call(id, stream);
    }, receiverId);
    await waitForMedia(receiver, 'window.call && window.call.peerConnection', { what: 'PeerJS receiver' });
    const iceServers = await receiver.evaluate(() => window.peer.options.config.iceServers.map((s) => s.urls).flat());
    assert.ok(iceServers.length > 0 && iceServers.every((u) => u.includes('127.0.0.1')), `Vessel's ICE servers only: ${iceServers}`);
  }));

test('p2: a PeerJS data connection round-trips a message', { timeout: 60000 }, () =>
  h.diagnose(async () => {
    const a = await peerPage('data a');
    await a.evaluate(() => {
      window.peer.on('connection', (conn) => {
        conn.on('data', (d) => conn.send(`pong:${d}`));
      });
    });
    const aId = await a.evaluate(() => window.peerId);
    const b = await peerPage('data b');
    await b.evaluate((id) => {
      const conn = window.peer.connect(id);
      conn.on('open', () => conn.send('ping'));
      conn.on('data', (d) => { window.reply = d; });
    }, aId);
    await waitInPage(b, `window.reply === 'pong:ping'`, 30000, 'the reply over the data channel');
  }));
