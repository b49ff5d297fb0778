// End-to-end tests of a cluster: three real `vessel --cluster` nodes on one real redis-server
// (started here, on loopback, without persistence), the cast page on one node and the play page's
// players routed to the others by `/api/route`. Nodes are killed with SIGKILL (no goodbye): the
// players and the publisher must notice, ask another node, and play (cast) again by themselves,
// without a page reload. Media is checked on getStats (frames decoded, audio received).

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { Harness, answerPeerjsCalls, callPeerjs, liveName, peerjsPage, waitFor, waitForMedia, waitInPage } from './helpers.mjs';

const PLAYER_PC = 'window.vesselPlayer && window.vesselPlayer.pc';

/** @type {Harness|null} */
let h = null;

afterEach(async () => {
  await h?.close();
  h = null;
});

/**
 * Node A (the harness's server: the caster's) takes no viewers (`--node-capacity 0`), so the
 * route API spreads viewers over B and C.
 */
async function startCluster() {
  h = await Harness.startCluster([0, 100, 100]);
  const [a, b, c] = h.nodes;
  return { a, b, c };
}

async function clusterView(base) {
  const res = await fetch(`${base}/api/cluster`);
  return res.ok ? res.json() : null;
}

/** Viewers a node reports in its heartbeat, by URL. */
async function viewersByNode(base) {
  const view = await clusterView(base);
  return Object.fromEntries((view?.nodes ?? []).map((n) => [n.url, n.viewers]));
}

async function openCaster(live, base) {
  const page = await h.open(`/cast/${live}`, `cast ${live}`, { base });
  await waitInPage(page, `!document.getElementById('golive').disabled`, 15000, 'camera ready (#golive enabled)');
  await page.click('#golive');
  await waitInPage(page, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'publisher state "live"');
  return page;
}

async function openViewer(live, base, name) {
  const page = await h.open(`/play/${live}`, name, { base });
  await waitInPage(page, `window.vesselPlayer && window.vesselPlayer.state === 'playing'`, 20000, `${name} playing`);
  await waitForMedia(page, PLAYER_PC, { what: name });
  // A marker that a reload would lose.
  await page.evaluate(() => {
    window.__notReloaded = true;
  });
  return page;
}

/**
 * Watches the page's player in the page itself, every 50 ms: when a video frame was last decoded
 * (on whichever connection the player has) and the longest stall since `reset()`, i.e. the
 * longest time between two frames: what the viewer sees as a frozen picture.
 */
async function watchFrames(page) {
  await page.evaluate(() => {
    window.__frames = { lastAt: Date.now(), maxGap: 0 };
    let last = { pc: null, frames: 0 };
    const tick = async () => {
      const pc = window.vesselPlayer?.pc;
      try {
        if (pc) {
          for (const s of (await pc.getStats()).values()) {
            if (s.type !== 'inbound-rtp' || s.kind !== 'video') continue;
            const frames = s.framesDecoded ?? 0;
            if (frames > (last.pc === pc ? last.frames : 0)) {
              const now = Date.now();
              window.__frames.maxGap = Math.max(window.__frames.maxGap, now - window.__frames.lastAt);
              window.__frames.lastAt = now;
            }
            last = { pc, frames };
          }
        }
      } catch {
        /* closed meanwhile */
      }
      setTimeout(tick, 50);
    };
    tick();
  });
  return {
    read: () => page.evaluate(() => ({ ...window.__frames, now: Date.now() })),
    reset: () => page.evaluate(() => { window.__frames.maxGap = 0; }),
  };
}

/**
 * Kills `server` with SIGKILL and waits until `page` decodes video again after a stall; returns
 * the stall (ms): the longest time between two decoded frames around the kill.
 */
async function gapAfterKill(server, page, what) {
  const frames = await watchFrames(page);
  await waitFor(async () => { const f = await frames.read(); return f.now - f.lastAt < 200; }, 5000, `${what}: frames flowing before the kill`, 50);
  await frames.reset();
  await server.stop('SIGKILL');
  const f = await waitFor(
    async () => {
      const f = await frames.read();
      // A stall (longer than a few frame intervals) that has ended.
      return f.maxGap > 250 && f.now - f.lastAt < 200 && f;
    },
    20000,
    `${what}: video decoded again after the kill`,
    50,
  );
  return f.maxGap;
}

test('cl1: viewers routed over two edges decode; kill -9 of an edge: its viewer plays from another node within 3 s, without a reload', async () => {
  const { a, b, c } = await startCluster();
  const live = liveName('cl1');
  const caster = await openCaster(live, a.url);

  // The first viewer lands on B or C (A takes none); once its node's heartbeat counts it, the
  // second goes to the other.
  const v1 = await openViewer(live, b.url, 'viewer 1');
  const node1 = await v1.evaluate(() => window.vesselPlayer.node);
  assert.ok([b.url, c.url].includes(node1), `viewer 1 plays from an edge (${node1})`);
  await waitFor(async () => (await viewersByNode(a.url))[node1] >= 1, 5000, "viewer 1's node counting it").catch(async (e) => {
    throw new Error(`${e.message}; the nodes: ${JSON.stringify(await clusterView(a.url))}`);
  });
  const v2 = await openViewer(live, c.url, 'viewer 2');
  const node2 = await v2.evaluate(() => window.vesselPlayer.node);
  assert.ok([b.url, c.url].includes(node2) && node2 !== node1, `viewer 2 plays from the other edge (${node2}, viewer 1 on ${node1})`);
  h.note(`viewer 1 on ${node1}, viewer 2 on ${node2}; the caster on ${a.url}`);
  // The caster's page on A counts the cluster's viewers (each edge's relay is not one).
  await waitInPage(caster, 'window.vesselPublisher.viewers === 2', 10000, "the cast page's count: 2 watching");
  const state = await (await fetch(`${a.url}/api/lives/${live}`)).json();
  h.note(`A's view of the live: ${JSON.stringify(state)}`);
  assert.equal(state.viewers, 2, 'two people watch');
  assert.equal(state.relaysHere, 2, 'through one relay per edge');

  // A chat line said on viewer 2's play page (its node) reaches the cast page on A, and the
  // caster's answer comes back, one room across the nodes.
  const chatOn = (page) => page.evaluate(() => window.vesselChat && { node: window.vesselChat.node, moderator: window.vesselChat.moderator, state: window.vesselChat.state });
  await waitInPage(caster, `window.vesselChat && window.vesselChat.moderator`, 10000, "the cast page's chat moderates (on the caster's node)");
  await waitInPage(v2, `window.vesselChat && window.vesselChat.state === 'open'`, 10000, "viewer 2's chat open");
  assert.equal((await chatOn(v2)).node, c.url, "viewer 2's chat is on its page's node");
  assert.equal((await chatOn(caster)).node, a.url, "the caster's chat is on the node it casts to");
  await v2.fill('#chattext', 'hello from C');
  await v2.press('#chattext', 'Enter');
  const heard = await waitInPage(caster, `window.vesselChat.messages.find((m) => m.text === 'hello from C')`, 5000, 'the line from C on the cast page on A');
  await caster.fill('#chattext', 'thanks');
  await caster.press('#chattext', 'Enter');
  const answer = await waitInPage(v2, `window.vesselChat.messages.find((m) => m.text === 'thanks')`, 5000, "the caster's answer on C");
  h.note(`chat: ${JSON.stringify(heard)} on A, ${JSON.stringify(answer)} on C`);
  assert.ok(answer.caster && answer.id > heard.id, 'the answer is marked as the caster\'s, and numbered after');

  // Kill viewer 2's node.
  const dead = node2 === b.url ? b : c;
  const gap = await gapAfterKill(dead, v2, 'viewer 2');
  const now = await v2.evaluate(() => window.vesselPlayer.node);
  h.note(`kill -9 of ${dead.url}: viewer 2 decoded video again on ${now} after ${gap} ms`);
  console.log(`cl1: edge killed with SIGKILL: its viewer played again from ${now} after ${gap} ms`);
  assert.equal(now, node1, 'viewer 2 moved to the surviving edge');
  assert.ok(gap < 3000, `viewer 2 played again within 3 s (took ${gap} ms)`);
  assert.equal(await v2.evaluate(() => window.__notReloaded), true, 'the page was not reloaded');
  await waitForMedia(v2, PLAYER_PC, { what: 'viewer 2 after the move' });
  // Viewer 1 never noticed.
  await waitForMedia(v1, PLAYER_PC, { what: 'viewer 1' });
});

test('cl2: kill -9 of the origin: the cast page casts again on another node, which becomes the origin, and the viewers on both other nodes resume without a reload', async () => {
  const { a, b, c } = await startCluster();
  const live = liveName('cl2');
  const caster = await openCaster(live, a.url);
  const v1 = await openViewer(live, b.url, 'viewer 1');
  const node1 = await v1.evaluate(() => window.vesselPlayer.node);
  assert.notEqual(node1, a.url);
  await waitFor(async () => (await viewersByNode(a.url))[node1] >= 1, 5000, "viewer 1's node counting it");
  const v2 = await openViewer(live, c.url, 'viewer 2');
  const node2 = await v2.evaluate(() => window.vesselPlayer.node);
  assert.ok(![a.url, node1].includes(node2), `viewer 2 on the third node (${node2})`);
  const origin = async (base) => (await fetch(`${base}/api/origin?live=${live}`)).json().catch(() => null);
  const before = await origin(node1);
  assert.equal(before.url, a.url, "the live's origin is A");

  const gap = await gapAfterKill(a, v1, 'viewer 1');
  const casting = await caster.evaluate(() => window.vesselPublisher.node);
  const after = await waitFor(async () => {
    const o = await origin(node1);
    return o?.url === casting && o;
  }, 10000, 'the new origin claimed');
  h.note(`kill -9 of the origin ${a.url}: the caster moved to ${casting} (epoch ${before.epoch} → ${after.epoch}); viewer 1 on ${node1} decoded again after ${gap} ms`);
  console.log(`cl2: origin killed with SIGKILL: the caster moved to another node and the edge's viewer played again after ${gap} ms`);
  assert.ok([b.url, c.url].includes(casting), `the caster casts to a live node (${casting})`);
  assert.ok(after.epoch > before.epoch, 'a newer epoch');
  assert.equal(await caster.evaluate(() => window.vesselPublisher.state), 'live');
  // The cast page's chat followed the caster to its new node, and moderates there.
  await waitInPage(caster, `window.vesselChat.node === ${JSON.stringify(casting)} && window.vesselChat.moderator`, 10000, "the cast page's chat moderating on the new node");
  for (const [page, what] of [[v1, 'viewer 1'], [v2, 'viewer 2']]) {
    assert.equal(await page.evaluate(() => window.__notReloaded), true, `${what}'s page was not reloaded`);
    await waitForMedia(page, PLAYER_PC, { what: `${what} after the origin moved` });
  }
});

test('cl3: the seed\'s PeerJS cast/receive with the caster and the receiver on different nodes (one hostname, two nodes): signaling crosses the cluster, video and audio decode', async () => {
  const { a, b } = await startCluster();
  const receiver = await peerjsPage(h, 'receive on A', a.url);
  await answerPeerjsCalls(receiver);
  const receiverId = await receiver.evaluate(() => window.peerId);
  const caster = await peerjsPage(h, 'cast on B', b.url);
  await callPeerjs(caster, receiverId);
  await waitForMedia(receiver, 'window.call && window.call.peerConnection', { what: 'PeerJS receiver on A, called from B' });
  // The same id on the other node, with another token: taken.
  const taken = await caster.evaluate(async (id) => {
    const peer = new window.peerjs.Peer(id, { host: '127.0.0.1', port: Number(location.port), path: '/peer' });
    return new Promise((resolve) => {
      peer.on('open', () => resolve('open'));
      peer.on('error', (e) => resolve(e.type));
    });
  }, receiverId);
  assert.equal(taken, 'unavailable-id', "the receiver's id, asked for on B, is taken");
});
