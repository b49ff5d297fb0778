// The seed's PeerJS cast/receive flow (next/pages/live/cast.tsx, receive.tsx) with the unmodified
// npm `peerjs` client against Vessel's PeerServer at path /peer, with Vessel's ICE servers
// (never the public PeerJS cloud or public STUN).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Harness, answerPeerjsCalls, callPeerjs, peerjsPage, waitForMedia, waitInPage } from './helpers.mjs';

const peerPage = (name) => peerjsPage(h, name);

/** @type {Harness} */
let h;

before(async () => {
  h = await Harness.start();
});

after(async () => {
  await h?.close();
});

test('p1: the seed\'s PeerJS cast/receive: the caster calls the receiver\'s id, video and audio decode', { timeout: 90000 }, () =>
  h.diagnose(async () => {
    const receiver = await peerPage('receive');
    await answerPeerjsCalls(receiver);
    const receiverId = await receiver.evaluate(() => window.peerId);
    assert.match(receiverId, /^[0-9a-f-]{36}$/, 'an id from GET /peer/peerjs/id');

    const caster = await peerPage('cast');
    await callPeerjs(caster, receiverId);
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
