// End-to-end tests of what the audience sees around the media: the cast page's stream-key prompt,
// the chat (ordering, limits, moderation, history across reconnects and reloads), viewer counts,
// private lives' viewer tokens, and the server's shutdown notice. Real Chromium pages with a fake
// camera against the real server binary; media is checked on getStats (waitForMedia).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Harness, VesselServer, liveName, waitFor, waitForMedia, waitInPage } from './helpers.mjs';

const PLAYER_PC = 'window.vesselPlayer && window.vesselPlayer.pc';

/** @type {Harness} */
let h;

before(async () => {
  h = await Harness.start();
});

after(async () => {
  await h?.close();
});

/** Opens /cast/{live} (on `base`) and waits until the camera is ready. */
async function openCaster(live, { base = h.url, name = `cast ${live}` } = {}) {
  const page = await h.open(`/cast/${live}`, name, { base });
  await waitInPage(page, `!document.getElementById('golive').disabled`, 15000, 'camera ready (#golive enabled)');
  return page;
}

async function goLive(caster) {
  await caster.click('#golive');
  await waitInPage(caster, `window.vesselPublisher && window.vesselPublisher.state === 'live'`, 20000, 'publisher state "live"');
}

/** A JSON request to the server (the admin API needs no token on a loopback-only server). */
async function api(method, pathname, body, base = h.url) {
  const res = await fetch(base + pathname, {
    method,
    headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, text, json, headers: res.headers };
}

/** The chat messages a page shows, in document order. */
function chatItems(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#chatlist li')].map((li) => ({
      id: Number(li.dataset.id),
      name: li.querySelector('.who')?.textContent ?? '',
      text: li.querySelector('.text')?.textContent ?? '',
      caster: li.dataset.caster === 'true',
    })),
  );
}

/** Types `text` in the page's chat box and sends it (Enter). */
async function say(page, text) {
  await page.fill('#chattext', text);
  await page.press('#chattext', 'Enter');
}

/** Waits until the page's chat is connected (welcomed), optionally under `name`. */
function chatOpen(page, what, name) {
  const cond = `window.vesselChat && window.vesselChat.state === 'open'${name ? ` && window.vesselChat.name === ${JSON.stringify(name)}` : ''}`;
  return waitInPage(page, cond, 15000, `${what}: chat open${name ? ` as ${name}` : ''}`);
}

/**
 * Waits until every page shows the same messages (ids, names, texts) and `check(list)` holds;
 * returns the list. Asserts that the ids increase (everyone sees the server's order).
 */
async function sameChat(pages, what, check = () => true, timeoutMs = 15000) {
  let lists = [];
  await waitFor(
    async () => {
      lists = await Promise.all(pages.map(chatItems));
      const key = (l) => JSON.stringify(l.map((m) => [m.id, m.name, m.text, m.caster]));
      return lists.every((l) => key(l) === key(lists[0])) && check(lists[0]);
    },
    timeoutMs,
    what,
  ).catch((err) => {
    err.message += `\n  lists: ${JSON.stringify(lists.map((l) => l.map((m) => `${m.id}:${m.name}:${m.text.slice(0, 20)}`)))}`;
    throw err;
  });
  const ids = lists[0].map((m) => m.id);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), `ids in increasing order: ${ids}`);
  assert.equal(new Set(ids).size, ids.length, `no message twice: ${ids}`);
  return lists[0];
}

test('z1: a live with a stream key: the cast page asks for it (server\'s reason), refuses a wrong one without casting, casts with the right one and remembers it for the tab', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const live = liveName('z1');
    const created = await api('POST', '/api/lives', { live, private: false });
    assert.equal(created.status, 201, created.text);
    assert.equal(created.json.live, live);
    const { key } = created.json;
    assert.ok(typeof key === 'string' && key.length >= 8, `a key: ${created.text}`);

    const caster = await openCaster(live);
    let whipPosts = 0;
    caster.on('request', (r) => {
      if (r.method() === 'POST' && new URL(r.url()).pathname === `/whip/${live}`) whipPosts++;
    });

    // 1. No key: 401 → the prompt, with the server's reason; the SDK waits (no retry loop).
    await caster.click('#golive');
    await waitInPage(caster, `!document.getElementById('keyform').hidden && document.getElementById('keyreason').textContent.length > 0`, 15000, 'key prompt shown');
    const first = await caster.evaluate(() => ({
      state: window.vesselPublisher.state,
      refusal: { status: window.vesselPublisher.refusal?.status, reason: window.vesselPublisher.refusal?.reason },
      reason: document.getElementById('keyreason').textContent,
      badge: document.getElementById('state').textContent,
      inputType: document.getElementById('key').type,
      error: document.getElementById('error').textContent,
    }));
    h.note(`key prompt: ${JSON.stringify(first)}`);
    assert.equal(first.state, 'unauthorized');
    assert.equal(first.refusal.status, 401);
    assert.match(first.reason, /needs its stream key/, 'the server\'s reason is shown');
    assert.equal(first.reason, first.refusal.reason);
    assert.equal(first.inputType, 'password');
    assert.equal(first.error, '', 'the 401 is shown in the prompt, not as an error');

    // 2. A wrong key: refused with the server's reason, nothing cast.
    await caster.fill('#key', 'not-the-right-key');
    await caster.click('#keysubmit');
    await waitInPage(
      caster,
      `document.getElementById('keyform').dataset.state === 'asking' && /wrong stream key/.test(document.getElementById('keyreason').textContent)`,
      15000,
      'the wrong key refused in the prompt',
    );
    const refused = await caster.evaluate((live) => ({
      state: window.vesselPublisher.state,
      pc: window.vesselPublisher.pc,
      stored: sessionStorage.getItem(`vessel-key:${live}`),
    }), live);
    assert.deepEqual(refused, { state: 'unauthorized', pc: null, stored: null });
    assert.equal((await api('GET', `/api/lives/${live}`)).json.onAir, false, 'nothing on air after a wrong key');
    assert.equal(whipPosts, 2, 'one WHIP POST without a key, one with the wrong key');

    // 3. The right key: live; a viewer decodes; the key is remembered for this tab.
    await caster.fill('#key', key);
    await caster.click('#keysubmit');
    await waitInPage(caster, `window.vesselPublisher.state === 'live'`, 20000, 'publisher live with the right key');
    await waitInPage(caster, `document.getElementById('keyform').hidden && document.getElementById('state').dataset.state === 'live'`, 5000, 'prompt hidden, LIVE shown');
    assert.equal(await caster.evaluate((live) => sessionStorage.getItem(`vessel-key:${live}`), live), key);
    const viewer = await h.open(`/play/${live}`, `play ${live}`);
    await waitForMedia(viewer, PLAYER_PC, { what: 'viewer of the keyed live' });
    assert.equal((await api('GET', `/api/lives/${live}`)).json.onAir, true);
    assert.equal(whipPosts, 3, 'no WHIP POST retried while waiting for a key');

    // 4. A reload of the cast page casts with the remembered key, without asking.
    await caster.reload();
    await waitInPage(caster, `!document.getElementById('golive').disabled`, 15000, 'camera ready after reload');
    await goLive(caster);
    assert.equal(await caster.evaluate(() => document.getElementById('keyform').hidden), true, 'no prompt with the remembered key');
    await waitForMedia(viewer, PLAYER_PC, { what: 'viewer after the cast page reloaded' });

    await h.closePage(viewer);
    await h.closePage(caster);

    // 5. The SDK alone: a 401 is an `error` with status and reason, then state `unauthorized`
    //    (no retries); setKey() rejects on a wrong key and resolves once live with the right one.
    const page = await h.open('/', 'sdk keys');
    const sdk = await page.evaluate(async ({ live, key }) => {
      const { publish } = await import('/vessel.js');
      const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      const publisher = publish(live, stream);
      window.vesselPublisher = publisher;
      const states = [];
      publisher.on('state', (s) => states.push(s));
      const error = await new Promise((r) => publisher.on('error', r));
      await new Promise((r) => (publisher.state === 'unauthorized' ? r() : publisher.on('state', (s) => s === 'unauthorized' && r())));
      const wrong = await publisher.setKey('still-not-the-key').then(() => null, (err) => ({ name: err.name, status: err.status, reason: err.reason }));
      await publisher.setKey(key);
      const out = { error: { name: error.name, status: error.status, reason: error.reason }, wrong, states: [...states], session: publisher.session };
      await publisher.stop();
      stream.getTracks().forEach((t) => t.stop());
      return out;
    }, { live, key });
    h.note(`sdk keys: ${JSON.stringify(sdk)}`);
    assert.deepEqual(sdk.error, { name: 'VesselHttpError', status: 401, reason: sdk.error.reason });
    assert.match(sdk.error.reason, /needs its stream key/);
    assert.equal(sdk.wrong?.status, 401);
    assert.match(sdk.wrong.reason, /wrong stream key/);
    assert.deepEqual(sdk.states, ['unauthorized', 'connecting', 'unauthorized', 'connecting', 'live']);
    assert.match(sdk.session ?? '', /^[0-9a-f]+$/, 'publisher.session: the WHIP session id');
    await h.closePage(page);

    assert.equal((await api('DELETE', `/api/lives/${live}`)).status, 204);
  }),
);

test('z2: chat: everyone sees the same messages in id order; length and rate limits shown inline; the caster removes a message for all; reconnects and reloads keep the history without duplicates; viewer count 0 → 2 → 1', { timeout: 180000 }, () =>
  h.diagnose(async () => {
    const live = liveName('z2');
    const caster = await openCaster(live);
    assert.equal(await caster.evaluate(() => document.getElementById('viewers').dataset.viewers), '0');
    await goLive(caster);
    // The caster's chat reconnects with its WHIP session id: the moderator.
    await waitInPage(caster, `window.vesselChat.state === 'open' && window.vesselChat.moderator && document.getElementById('chat').dataset.moderator === 'true'`, 15000, 'caster chat open as moderator');

    const alice = await h.open(`/play/${live}`, `play Alice ${live}`);
    const bob = await h.open(`/play/${live}`, `play Bob ${live}`);
    for (const [page, name] of [[alice, 'Alice'], [bob, 'Bob']]) {
      await chatOpen(page, name);
      await page.fill('#chatname', name);
      await page.press('#chatname', 'Enter');
      await chatOpen(page, name, name);
    }
    await waitForMedia(alice, PLAYER_PC, { what: 'Alice' });
    await waitForMedia(bob, PLAYER_PC, { what: 'Bob' });
    await waitInPage(caster, `document.getElementById('viewers').dataset.viewers === '2'`, 15000, 'cast page shows 2 viewers');
    assert.match(await caster.textContent('#viewers'), /^2 viewers$/);
    const everyone = [caster, alice, bob];

    // 1. Alice says hello: everyone sees it.
    await say(alice, 'hello from Alice');
    let list = await sameChat(everyone, 'everyone sees Alice\'s hello', (l) => l.some((m) => m.text === 'hello from Alice'));
    assert.deepEqual(list.map((m) => [m.name, m.text, m.caster]), [['Alice', 'hello from Alice', false]]);

    // 2. Alice and Bob send at the same time: every page shows the same order.
    const burst = (page, who) => (async () => {
      for (let i = 1; i <= 3; i++) await say(page, `${who} ${i}`);
    })();
    await Promise.all([burst(alice, 'Alice'), burst(bob, 'Bob')]);
    await say(caster, 'welcome, both of you');
    list = await sameChat(everyone, 'the same 8 messages everywhere', (l) => l.length === 8);
    for (const who of ['Alice', 'Bob']) {
      assert.deepEqual(list.filter((m) => m.name === who && /^\w+ \d$/.test(m.text)).map((m) => m.text), [1, 2, 3].map((i) => `${who} ${i}`), `${who}'s messages in the order sent`);
    }
    assert.deepEqual(list.filter((m) => m.caster).map((m) => [m.name, m.text]), [[live, 'welcome, both of you']], 'the caster\'s message is marked');

    // 3. 501 characters: refused, the reason on Alice's page only, nothing sent.
    await say(alice, 'x'.repeat(501));
    await waitInPage(alice, `/message too long: 501 characters, at most 500/.test(document.getElementById('chaterror').textContent)`, 10000, 'length error on Alice\'s page');
    for (const page of [bob, caster]) assert.equal(await page.textContent('#chaterror'), '', 'no error on the others\' pages');
    assert.equal((await alice.inputValue('#chattext')).length, 501, 'the refused text is back in the box, to edit');

    // 4. Sending fast: past the burst (5, then one per 2 s), the rate-limit error.
    const FAST = 8;
    for (let i = 1; i <= FAST; i++) await say(alice, `fast ${i}`);
    await waitInPage(alice, `/too many messages: wait \\d+ ms/.test(document.getElementById('chaterror').textContent)`, 10000, 'rate-limit error on Alice\'s page');
    h.note(`Alice's error: ${await alice.textContent('#chaterror')}`);
    // What got through reaches everyone (and the 501 characters nobody).
    const own = await chatItems(alice);
    const fast = own.filter((m) => m.text.startsWith('fast ')).length;
    assert.ok(fast >= 1 && fast < FAST, `some fast messages refused: ${fast} of ${FAST} went through`);
    list = await sameChat(everyone, 'the same messages after the limits', (l) => l.length === 8 + fast);
    assert.ok(list.every((m) => m.text.length <= 500), 'the 501-character message was not sent');
    for (const page of [bob, caster]) assert.equal(await page.textContent('#chaterror'), '');

    // 5. The caster removes Bob's first message: it disappears everywhere.
    const victim = list.find((m) => m.text === 'Bob 1');
    await caster.click(`#chatlist li[data-id="${victim.id}"] .remove`);
    list = await sameChat(everyone, `message ${victim.id} removed everywhere`, (l) => !l.some((m) => m.id === victim.id));
    assert.equal(await bob.locator('#chatlist .remove:visible').count(), 0, 'viewers get no remove buttons');

    // 6. Bob's chat connection drops; messages sent meanwhile arrive once it is back (?since=).
    await bob.evaluate(() => {
      window.chatStates = [];
      window.vesselChat.on('state', (s) => window.chatStates.push(s));
      window.vesselChat._ws.close();
    });
    await waitInPage(bob, `window.chatStates.includes('reconnecting')`, 5000, 'Bob\'s chat reconnecting');
    await say(caster, 'while Bob reconnects');
    await waitInPage(bob, `window.chatStates.at(-1) === 'open'`, 15000, 'Bob\'s chat open again');
    list = await sameChat(everyone, 'Bob caught up after reconnecting', (l) => l.some((m) => m.text === 'while Bob reconnects'));
    assert.equal(await bob.evaluate(() => window.vesselChat.messages.length), list.length);

    // 7. Bob reloads: the kept history (without the removed message), his name remembered, then
    //    new messages once each.
    await bob.reload();
    await chatOpen(bob, 'Bob after reload', 'Bob');
    assert.equal(await bob.inputValue('#chatname'), 'Bob', 'name remembered (localStorage)');
    list = await sameChat(everyone, 'Bob sees the kept history after reloading', (l) => l.length === list.length);
    assert.ok(!list.some((m) => m.id === victim.id), 'the removed message stays removed');
    await say(bob, 'Bob is back');
    await say(caster, 'welcome back');
    list = await sameChat(everyone, 'new messages after the reload', (l) => l.at(-1)?.text === 'welcome back');
    assert.deepEqual(list.slice(-2).map((m) => m.text), ['Bob is back', 'welcome back']);
    await waitForMedia(bob, PLAYER_PC, { what: 'Bob after reload' });

    // 8. Viewer count: Alice leaves → 1.
    await h.closePage(alice);
    await waitInPage(caster, `document.getElementById('viewers').dataset.viewers === '1'`, 15000, 'cast page shows 1 viewer');
    assert.match(await caster.textContent('#viewers'), /^1 viewer$/);

    await h.closePage(bob);
    await h.closePage(caster);
  }),
);

test('z3: a private live: /play/{live}?token= plays and chats; without a token the page says so (401), and the chat refuses it', { timeout: 120000 }, () =>
  h.diagnose(async () => {
    const server = await new VesselServer(h.log).start({ extraArgs: ['--viewer-token-secret', 'z3-secret-0123456789abcdef0123456789'] });
    try {
      const live = liveName('z3');
      const created = await api('POST', '/api/lives', { live, private: true }, server.url);
      assert.equal(created.status, 201, created.text);
      const minted = await api('POST', `/api/lives/${live}/tokens`, { ttl: 600 }, server.url);
      assert.equal(minted.status, 201, minted.text);
      const { token } = minted.json;

      const caster = await openCaster(live, { base: server.url });
      await caster.click('#golive');
      await waitInPage(caster, `!document.getElementById('keyform').hidden`, 15000, 'key prompt');
      await caster.fill('#key', created.json.key);
      await caster.click('#keysubmit');
      await waitInPage(caster, `window.vesselPublisher.state === 'live'`, 20000, 'publisher live');

      // With the token: media and chat.
      const member = await h.open(`/play/${live}?token=${encodeURIComponent(token)}`, `play ${live} (token)`, { base: server.url });
      await waitForMedia(member, PLAYER_PC, { what: 'viewer with a token' });
      await chatOpen(member, 'member');
      await say(member, 'members only');
      // The caster chats in its own private live without a token (its WHIP session id): it
      // sees the member's message and moderates.
      await sameChat([member, caster], 'the member\'s message in both chats', (l) => l.some((m) => m.text === 'members only'));
      await waitInPage(caster, `window.vesselChat.moderator === true`, 15000, 'caster moderates its private live');

      // Without: WHEP 401 → the page says why; the chat never opens.
      const stranger = await h.open(`/play/${live}`, `play ${live} (no token)`, { base: server.url });
      await waitInPage(stranger, `window.vesselPlayer.state === 'failed'`, 15000, 'player failed without a token');
      const shown = await stranger.evaluate(() => ({
        overlay: document.getElementById('overlay').textContent,
        error: document.getElementById('error').textContent,
      }));
      assert.match(shown.overlay, /private/);
      assert.match(shown.error, /viewer token/);
      // The chat's WebSocket upgrade is refused (401): it keeps retrying, never opens.
      await waitInPage(stranger, `window.vesselChat.state === 'reconnecting'`, 15000, 'stranger\'s chat refused');
      assert.equal(await stranger.locator('#chatlist li').count(), 0, 'no messages for a stranger');

      for (const p of [stranger, member, caster]) await h.closePage(p);
    } finally {
      await server.stop();
    }
  }),
);

test('z4: on SIGTERM the pages are told (event stream `shutdown`, chat `shutdown`), and after the restart media and chat come back (chat history starts over)', { timeout: 150000 }, () =>
  h.diagnose(async () => {
    const server = await new VesselServer(h.log).start();
    try {
      const live = liveName('z4');
      const caster = await openCaster(live, { base: server.url });
      await goLive(caster);
      const viewer = await h.open(`/play/${live}`, `play ${live}`, { base: server.url });
      const before = await waitForMedia(viewer, PLAYER_PC, { what: 'viewer before the restart' });
      await chatOpen(viewer, 'viewer');
      await waitInPage(caster, `window.vesselChat.state === 'open' && window.vesselChat.moderator`, 15000, 'caster chat open as moderator');
      await say(viewer, 'before the restart');
      await sameChat([caster, viewer], 'the message before the restart', (l) => l.length === 1);
      for (const page of [caster, viewer]) {
        await page.evaluate(() => {
          window.shutdownSeen = [];
          (window.vesselPublisher ?? window.vesselPlayer).on('shutdown', (text) => window.shutdownSeen.push(`events:${text}`));
          window.vesselChat.on('shutdown', () => window.shutdownSeen.push('chat'));
          window.vesselChat.on('reset', () => window.shutdownSeen.push('reset'));
        });
      }

      await server.restart();
      for (const [page, who] of [[caster, 'caster'], [viewer, 'viewer']]) {
        const seen = await waitInPage(page, `window.shutdownSeen.some((s) => s.startsWith('events:')) && window.shutdownSeen.includes('chat') && window.shutdownSeen`, 15000, `${who} told of the shutdown`);
        h.note(`${who} saw: ${JSON.stringify(seen)}`);
      }

      await waitInPage(caster, `window.vesselPublisher.state === 'live'`, 60000, 'publisher live again');
      const again = await waitForMedia(viewer, PLAYER_PC, { timeoutMs: 60000, what: 'viewer after the restart' });
      assert.notEqual(again.id, before.id, 'a new connection');
      await waitInPage(viewer, `document.getElementById('notice').textContent === ''`, 15000, 'the restart notice cleared once playing');
      // The chat started over (the old server's history is gone) and works again.
      for (const page of [caster, viewer]) await chatOpen(page, 'after the restart');
      await waitInPage(caster, `window.vesselChat.moderator`, 15000, 'caster moderator again (new WHIP session)');
      await say(viewer, 'after the restart');
      const list = await sameChat([caster, viewer], 'the chat after the restart', (l) => l.some((m) => m.text === 'after the restart'));
      assert.deepEqual(list.map((m) => m.text), ['after the restart'], 'only the new server\'s messages');
      for (const page of [caster, viewer]) assert.ok((await page.evaluate(() => window.shutdownSeen)).includes('reset'));

      await h.closePage(viewer);
      await h.closePage(caster);
    } finally {
      await server.stop();
    }
  }),
);
