/**
 * Vessel browser SDK — publish and play lives over standard WHIP / WHEP.
 *
 * ```js
 * import { publish, play } from '/vessel.js';
 *
 * const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
 * const publisher = publish('demo', stream);
 * publisher.on('state', (s) => console.log('caster', s));   // connecting → live
 * publisher.on('viewers', (n) => console.log(n, 'watching'));
 *
 * const player = play('demo', { video: document.querySelector('video') });
 * player.on('state', (s) => console.log('viewer', s));      // connecting → waiting → playing → ended …
 * player.on('stats', (s) => console.log(`${s.width}×${s.height} · ${s.bitrateKbps} kbps`));
 * player.setLayer('low');                                    // cap the quality: 'auto' | 'high' | 'medium' | 'low'
 * ```
 *
 * `publish()` sends the video as simulcast: up to three layers (rids `q`, `h`, `f`: ¼, ½ and full
 * size at about 100, 300 and 900 kbps; fewer layers for small tracks), and the server forwards to
 * each viewer the best layer its link carries (or the one it asked for with `setLayer`).
 *
 * Both handles reconnect by themselves (new WHIP/WHEP POST, with backoff) when the
 * connection or the server goes away, and release their server session on `stop()` and
 * when the page is closed.
 *
 * Where WebRTC cannot get through (no UDP, no TCP, no TURN to the server), a player can fall back
 * to LL-HLS by itself:
 *
 * ```js
 * const player = play('demo', { video, fallback: 'hls' });   // WebRTC; LL-HLS if not connected in 4.5 s
 * player.on('path', (p) => console.log('now over', p));      // 'hls' (player.path: 'webrtc' | 'hls')
 * player.on('stats', (s) => console.log(s.path, s.delay));   // over LL-HLS: s behind the caster's clock
 * play('demo', { video, fallback: 'only' });                  // LL-HLS at once
 * ```
 *
 * Over LL-HLS Safari plays the playlist itself; other browsers use `/assets/hls-player.js` (Media
 * Source Extensions). A VP8 live has no LL-HLS (the player reports a 409 error): when the server
 * packages HLS, `publish()` puts H.264 first unless `video.codec` says otherwise.
 *
 * In a cluster of Vessel nodes (`vessel --cluster`), each connection starts by asking where to go
 * (`GET {server}/api/route`): a player plays from the least-loaded node, a publisher casts to the
 * node its live is cast on (or to `server`). When that node dies, they notice at once (its event
 * stream breaks and it no longer answers), ask the other nodes the route named, skipping the dead
 * one, and reconnect there without delay, without a page reload. A single server answers
 * `local`: nothing changes.
 *
 * Before each connection (and each reconnection) they fetch the server's STUN/TURN servers,
 * with fresh TURN credentials, from `GET {server}/api/ice-servers`, so that viewers and casters
 * behind strict NATs or firewalls that drop UDP still connect (through the server's TURN relay).
 * Pass `iceServers` to use your own instead, and `iceTransportPolicy: 'relay'` to force the relay.
 *
 * Stream keys and viewer tokens:
 *
 * ```js
 * const publisher = publish('demo', stream, { key: savedKey });     // Authorization: Bearer <key>
 * publisher.on('error', (err) => {
 *   if (err.status === 401) askForKey(err.reason);                 // the server's reason
 * });
 * publisher.on('state', (s) => s === 'unauthorized' && console.log('waiting for a key'));
 * await publisher.setKey(key);   // retries now; resolves once live, rejects on another 401
 *
 * const player = play('members', { token });                        // a private live's viewer token
 * ```
 *
 * A caster that the server refuses with `401` (no key, wrong or revoked key) is not retried: it
 * reports the error (`status` 401, `reason` the server's text), goes to state `unauthorized`
 * and waits for `setKey()`. Both handles report `shutdown` when the server announces that it is
 * stopping (they reconnect by themselves once it is back).
 *
 * Chat beside a live (a WebSocket; independent of the media connection):
 *
 * ```js
 * import { chat } from '/vessel.js';
 *
 * const room = chat('demo', { name: 'Ada' });                      // `token` for private lives
 * room.on('message', (m) => console.log(m.id, m.name, m.text));   // in id order, never twice
 * room.on('removed', (id) => console.log('removed', id));
 * room.on('error', (err) => console.log(err.reason));              // too long, too fast, …
 * room.send('hello');
 *
 * // On the caster's page: its WHIP session id makes it the moderator.
 * publisher.on('session', (id) => room.setSession(id, publisher.node));
 * room.remove(12);
 * ```
 *
 * @module vessel
 */

/** Delays (ms) between reconnection attempts; the last one repeats. */
const RETRY_DELAYS = [500, 1000, 2000, 4000, 8000];
/** How long an ICE `disconnected` state may last before we reconnect (ms). */
const DISCONNECT_GRACE_MS = 4000;
/** How long a new connection may take to reach `connected` (ms). */
const CONNECT_TIMEOUT_MS = 15000;
/** Timeout of one WHIP/WHEP POST (ms). */
const POST_TIMEOUT_MS = 10000;
/** Timeout of a DELETE (ms). */
const DELETE_TIMEOUT_MS = 3000;
/** Timeout of one route request (ms): past it, the next node is asked. */
const ROUTE_TIMEOUT_MS = 2000;
/** Timeout of the check whether the node in use still answers (ms). */
const PROBE_TIMEOUT_MS = 1000;
/** Timeout of the ICE servers request (ms): past it, connect without STUN/TURN. */
const ICE_SERVERS_TIMEOUT_MS = 5000;
/** Values of the `iceTransportPolicy` option. */
const ICE_TRANSPORT_POLICIES = ['all', 'relay'];
/**
 * How long WebRTC may take to connect before a player with `fallback: 'hls'` turns to LL-HLS
 * (ms). A direct connection takes well under a second, one through the TURN relay over TCP
 * (ICE servers fetched, relay allocated, checks over TCP) one to two seconds on a slow link;
 * a blocked one never completes (ICE gives up only after ~30 s). 4.5 s leaves the slow relayed
 * path room and is about the patience of a viewer looking at "Connecting…".
 */
const HLS_FALLBACK_MS = 4500;
/** Values of the player's `fallback` option. */
const FALLBACKS = [false, 'hls', 'only'];
/** Period of the player's `stats` event (ms). */
const STATS_INTERVAL_MS = 1000;
/** `rel` of the WHEP layer-selection extension in the answer's `Link` header. */
const LAYER_REL = 'urn:ietf:params:whep:ext:core:layer';
/** What a viewer can ask for: the best its link carries, or at most the top / middle / lowest layer. */
export const LAYERS = Object.freeze(['auto', 'high', 'medium', 'low']);

/**
 * The default simulcast layers, lowest first: quarter, half and full size. Small tracks send
 * fewer layers (the top ones are dropped, keeping the full size): see {@link simulcastEncodings}.
 */
export const DEFAULT_LAYERS = Object.freeze([
  Object.freeze({ rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 100_000 }),
  Object.freeze({ rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 300_000 }),
  Object.freeze({ rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 900_000 }),
]);

/**
 * The nodes of each cluster that the handles of this page learnt of, by the `server` they were
 * given (`server` → node URLs, from `/api/route`): where a chat goes when its node is gone.
 * @type {Map<string, string[]>}
 */
const clusterNodes = new Map();

/** RFC 8851 rid syntax (kept short). */
const RID = /^[A-Za-z0-9_-]{1,16}$/;

/**
 * The server this module was loaded from: Vessel serves it at `/vessel.js` (behind a reverse
 * proxy at `https://host/prefix/vessel.js`, the base is `https://host/prefix`).
 */
const DEFAULT_SERVER = new URL('.', import.meta.url).href;

/** Valid live names. */
export const LIVE_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * @typedef {object} CommonOptions
 * @property {string} [server] Base URL of the Vessel server (default: where this module was
 *   loaded from, so `import … from 'https://vessel.example/vessel.js'` needs no `server`).
 * @property {string} [token] Sent as `Authorization: Bearer <token>` on WHIP/WHEP requests and
 *   on the ICE servers request (not on the live's event stream: EventSource cannot send headers).
 *   For a player: the viewer token of a private live (pass it to {@link chat} too).
 * @property {boolean} [route] In a cluster, ask `server` where to connect (`GET /api/route`) and
 *   move to another node when the one in use dies (default `true`). `false`: always `server`.
 * @property {RTCIceServer[]} [iceServers] ICE servers for the RTCPeerConnection. Default: the
 *   server's own STUN/TURN servers, fetched from `{server}/api/ice-servers` before every
 *   connection and reconnection (TURN credentials are minted per request); if that request
 *   fails, a warning is logged and the connection goes ahead without ICE servers. Given
 *   explicitly, it is used as is and nothing is fetched: `[]` means no STUN/TURN at all (host
 *   candidates only, which is enough when the server is reachable directly, over UDP or TCP).
 * @property {'all'|'relay'} [iceTransportPolicy] `'all'` (default): use whichever path
 *   works best, direct or relayed; `'relay'`: only through a TURN relay (for networks that allow
 *   nothing else, or to test the relay).
 */

/**
 * @typedef {object} CandidateInfo How the media travels between this page and the server: the
 *   connection's selected ICE candidate pair.
 * @property {'host'|'srflx'|'prflx'|'relay'} type This side's candidate type: `host` = directly,
 *   `relay` = through a TURN server.
 * @property {'udp'|'tcp'} protocol The candidate's protocol (of a relay candidate: between the
 *   relay and the server, i.e. `udp`).
 * @property {'udp'|'tcp'|'tls'|null} relayProtocol For a relay candidate: how this page reaches
 *   the TURN server; otherwise null.
 * @property {'udp'|'tcp'|'tls'} transport What leaves this page: `relayProtocol` for a relay
 *   candidate, `protocol` otherwise.
 * @property {string|null} local This side's candidate address `ip:port` (browsers may hide it).
 * @property {string|null} remote The server's candidate address `ip:port`.
 */

/**
 * @typedef {CommonOptions & PublishExtra} PublishOptions
 *
 * @typedef {object} PublishExtra
 * @property {string} [key] The live's stream key, sent as `Authorization: Bearer <key>` on the
 *   WHIP requests (it takes the place of `token`). Needed when the live has a key, and for any
 *   live on a server reachable from other machines (unless it runs with `--open`). Without it
 *   (or with a wrong one) the publisher waits in state `unauthorized`: see
 *   {@link Publisher#setKey}.
 * @property {VideoOptions} [video] Encoding of the published video.
 * @property {boolean} [simulcast] `false`: send one encoding only (default `true`: up to three
 *   layers, by the track's size).
 * @property {LayerOptions[]} [layers] The simulcast layers to send, lowest first (default
 *   {@link DEFAULT_LAYERS}, trimmed for small tracks). One layer = no simulcast.
 *
 * @typedef {object} VideoOptions
 * @property {number} [maxBitrate] Bits per second (with simulcast: of the top layer).
 * @property {number} [maxFramerate] Frames per second (of every layer).
 * @property {number} [scaleResolutionDownBy] e.g. 2 sends half the width and height (with
 *   simulcast: applied on top of each layer's own factor).
 * @property {string} [codec] Preferred codec, e.g. `'VP8'` or `'H264'`.
 *
 * @typedef {object} LayerOptions One simulcast layer (an `RTCRtpEncodingParameters`).
 * @property {string} rid e.g. `'q'`, `'h'`, `'f'`.
 * @property {number} [scaleResolutionDownBy] Default 1.
 * @property {number} [maxBitrate] Bits per second.
 * @property {number} [maxFramerate] Frames per second.
 */

/**
 * @typedef {CommonOptions & {video?: HTMLVideoElement, layer?: Layer, fallback?: false|'hls'|'only'}} PlayOptions
 * `video`: an element to attach the received stream to (it is started with `play()`).
 * `layer`: the quality to ask for (default `'auto'`; see {@link Player#setLayer}).
 * `fallback`: `'hls'` = play over LL-HLS (`/hls/{live}/index.m3u8`) when WebRTC has not
 * connected within 4.5 s of the server's first WHEP answer (no UDP, no TCP, no TURN to it);
 * `'only'` = LL-HLS at once; `false` (default) = WebRTC only. LL-HLS needs `video`; it plays natively in Safari, through
 * `/assets/hls-player.js` (Media Source Extensions) elsewhere. `player.path` says which plays.
 *
 * @typedef {'auto'|'high'|'medium'|'low'} Layer
 *
 * @typedef {object} PlayerStats What the player receives, sampled every second.
 * @property {number} width Width of the decoded video (0 before the first frame).
 * @property {number} height
 * @property {number} fps Decoded frames per second.
 * @property {number} bitrateKbps Received video bitrate over the last second (kbit/s).
 * @property {number} framesDecoded
 * @property {number} packetsLost
 * @property {number} nackCount NACKs sent for lost video packets.
 * @property {number} freezeCount
 * @property {number} totalFreezesDuration Seconds.
 * @property {string|null} codec e.g. `'video/VP8'`.
 * @property {Layer} layer The quality asked for.
 * @property {CandidateInfo|null} candidate How the media reaches this page (direct or relayed,
 *   UDP or TCP).
 * @property {'webrtc'|'hls'} path How the media arrives (see the `fallback` option).
 * @property {number|null} delay Over LL-HLS: seconds the frame shown is behind the wall clock
 *   (by its PROGRAM-DATE-TIME); null over WebRTC.
 */

/** An error answered by the server (4xx / 5xx). */
export class VesselHttpError extends Error {
  /** @param {number} status @param {string} reason */
  constructor(status, reason) {
    super(`HTTP ${status}${reason ? `: ${reason}` : ''}`);
    this.name = 'VesselHttpError';
    /** HTTP status code. */
    this.status = status;
    /** The server's `text/plain` reason. */
    this.reason = reason;
  }

  /** Whether trying again cannot help (bad request, unauthorized, …). */
  get fatal() {
    return this.status >= 400 && this.status < 500 && this.status !== 408 && this.status !== 429;
  }
}

/** Minimal event emitter: `on(event, fn)`, `off(event, fn)`. */
class Emitter {
  #handlers = new Map();

  /**
   * Adds a listener.
   * @param {string} event
   * @param {(...args: any[]) => void} fn
   * @returns {this}
   */
  on(event, fn) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(fn);
    return this;
  }

  /**
   * Removes a listener added with `on`.
   * @param {string} event
   * @param {(...args: any[]) => void} fn
   * @returns {this}
   */
  off(event, fn) {
    this.#handlers.get(event)?.delete(fn);
    return this;
  }

  /** @protected */
  emit(event, ...args) {
    for (const fn of [...(this.#handlers.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`vessel: "${event}" listener threw`, err);
      }
    }
  }
}

/**
 * What Publisher and Player share: one WHIP/WHEP session at a time, reconnection with
 * backoff, the live's event stream (on air, viewers) and clean-up on stop / page close.
 * @abstract
 */
class Session extends Emitter {
  /**
   * @param {'whip'|'whep'} endpoint
   * @param {string} live
   * @param {CommonOptions} options
   */
  constructor(endpoint, live, options = {}) {
    super();
    if (!LIVE_NAME.test(live)) throw new TypeError(`invalid live name: ${JSON.stringify(live)}`);
    if (options.iceServers != null && !Array.isArray(options.iceServers)) {
      throw new TypeError('iceServers: expected an array of RTCIceServer');
    }
    if (options.iceTransportPolicy != null && !ICE_TRANSPORT_POLICIES.includes(options.iceTransportPolicy)) {
      throw new TypeError(`invalid iceTransportPolicy: ${JSON.stringify(options.iceTransportPolicy)} (expected ${ICE_TRANSPORT_POLICIES.join(' or ')})`);
    }
    /** The live's name. */
    this.live = live;
    /** @type {RTCPeerConnection|null} The current peer connection (replaced on reconnect). */
    this.pc = null;
    /** Current state (see the `state` event). */
    this.state = 'connecting';
    /** Viewers of the live, from the server's event stream. */
    this.viewers = 0;
    /** The live's warnings (strings, each with its fix); see the `warnings` event. */
    this.warnings = [];
    /** Whether the live is on air, from the server's event stream. */
    this.onAir = false;
    /**
     * @type {string|null} The id of the current server session (the last segment of the
     *   WHIP/WHEP `Location`), null while there is none. A caster's is what makes its chat
     *   connection the moderator (see {@link chat}).
     */
    this.session = null;

    this._endpoint = endpoint;
    this._options = options;
    this._server = (options.server ?? DEFAULT_SERVER).replace(/\/+$/, '');
    /** Base URL of the node in use (`server` unless a cluster routed elsewhere). */
    this.node = this._server;
    this._nodeId = null; // the cluster's id of that node; null on a single server
    this._nodes = []; // every node the last route named: where to ask when `server` is gone
    this._avoid = null; // { id, url } of a node found dead, until a connection succeeds elsewhere
    this._eventsBase = null; // the node the event stream is open to
    this._location = null; // URL of the current WHIP/WHEP session resource
    this._credential = options.token ?? null; // sent as Authorization: Bearer
    this._connected = false;
    this._stopped = false;
    this._generation = 0; // bumps on every (re)connection, to ignore stale callbacks
    this._attempt = 0;
    this._timers = new Set();
    this._events = null;
    this._onPageHide = () => this._deleteSession(true);
    globalThis.addEventListener?.('pagehide', this._onPageHide);

    // Start on the next microtask, so listeners added right after construction see every event.
    queueMicrotask(() => {
      this._openEvents();
      this._connect();
    });
  }

  /**
   * Stops: closes the connection and deletes the server session. Idempotent.
   * @returns {Promise<void>} resolves once the server acknowledged the DELETE (or failed to).
   */
  stop() {
    return this._finish('stopped').then(() => {});
  }

  /**
   * How the media travels between this page and the server now (direct or through the TURN
   * relay, over UDP or TCP).
   * @returns {Promise<CandidateInfo|null>} null while not connected.
   */
  async candidate() {
    const pc = this.pc;
    if (!pc || !this._connected) return null;
    try {
      return selectedCandidate(await pc.getStats());
    } catch {
      return null; // closed meanwhile
    }
  }

  // ---- subclass hooks ----

  /** @protected @abstract Adds transceivers to a new peer connection. */
  _preparePeer(_pc) {}

  /** @protected @abstract Recomputes `state` from the connection and the live's state. */
  _updateState() {}

  /** @protected A new server session answered (`res`: the POST's response). */
  _onSession(_res) {}

  /**
   * @protected The server answered the POST with 401 (`err`) to the credential `used`. Return
   * true to wait for new credentials instead of failing for good.
   */
  _onUnauthorized(_err, _used) {
    return false;
  }

  // ---- internals ----

  /** Ends the session for good, in state `stopped` or `failed`. */
  _finish(state) {
    if (this._stopped) return Promise.resolve();
    this._stopped = true;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    globalThis.removeEventListener?.('pagehide', this._onPageHide);
    this._events?.close();
    const deleted = this._closePeer();
    this._setState(state);
    return deleted;
  }

  /** @protected */
  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.emit('state', state);
  }

  _headers(extra = {}) {
    const headers = { ...extra };
    if (this._credential) headers.Authorization = `Bearer ${this._credential}`;
    return headers;
  }

  /** The session resource `resource` (a URL) is now this handle's server session. */
  _setLocation(resource) {
    this._location = resource;
    let id = null;
    try {
      id = decodeURIComponent(new URL(resource).pathname.split('/').filter(Boolean).at(-1) ?? '') || null;
    } catch {
      /* not a URL we can read: no id */
    }
    this.session = id;
    if (id) this.emit('session', id);
  }

  _later(fn, ms) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  _cancel(t) {
    if (t == null) return;
    clearTimeout(t);
    this._timers.delete(t);
  }

  /** One connection attempt: offer → POST → answer. */
  async _connect() {
    if (this._stopped) return;
    const generation = ++this._generation;
    const stale = () => this._stopped || generation !== this._generation;
    const credential = this._credential;

    this._connectTimer = this._later(() => {
      if (!stale() && !this._connected) this._reconnect(new Error('connection timed out'));
    }, CONNECT_TIMEOUT_MS);

    const base = await this._route();
    if (stale()) return;
    if (base !== this.node || this._eventsBase !== base) {
      this.node = base;
      this._openEvents();
    }
    // Fresh TURN credentials for every connection: the previous ones may have expired, and after
    // a server restart the TURN port and secret may have changed.
    const iceServers = await this._iceServers(base);
    if (stale()) return;
    const pc = newPeerConnection(iceServers, this._options.iceTransportPolicy ?? 'all');
    this.pc = pc;
    pc.addEventListener('connectionstatechange', () => {
      if (!stale()) this._onConnectionState(pc);
    });
    this._preparePeer(pc);

    try {
      await pc.setLocalDescription(await pc.createOffer());
      // The server is ICE-lite and answers with its candidates: no need to wait for ours.
      const url = `${base}/${this._endpoint}/${encodeURIComponent(this.live)}`;
      const res = await fetch(url, {
        method: 'POST',
        headers: this._headers({ 'Content-Type': 'application/sdp' }),
        body: pc.localDescription.sdp,
        signal: AbortSignal.timeout(POST_TIMEOUT_MS),
      });
      const body = await res.text();
      if (!res.ok) throw new VesselHttpError(res.status, body.trim());
      const location = res.headers.get('Location');
      if (location) {
        const resource = new URL(location, res.url).href;
        if (stale()) {
          this._delete(resource, false);
          return;
        }
        this._setLocation(resource);
      }
      if (stale()) return;
      this._onSession(res);
      await pc.setRemoteDescription({ type: 'answer', sdp: body });
    } catch (err) {
      if (stale()) return;
      if (err instanceof VesselHttpError && err.status === 401 && this._onUnauthorized(err, credential)) return;
      if (err instanceof VesselHttpError && err.fatal) {
        this.emit('error', err);
        this._finish('failed');
        return;
      }
      this._reconnect(err);
    }
  }

  /**
   * Where to connect (`GET /api/route`): asks `server`, then, if it does not answer, the other
   * nodes the last route named. A node found dead is skipped, and the answer is asked to avoid it
   * (its heartbeat outlives it by up to three seconds). A single server answers `local`: `server`
   * is kept as given (it may sit behind a reverse proxy, under a path). A server without the
   * route API, or no node answering: `server`, or the node in use.
   * @returns {Promise<string>} the base URL of the node to connect to
   */
  async _route() {
    if (this._options.route === false) return this._server;
    const query = new URLSearchParams({ live: this.live });
    if (this._endpoint === 'whip') query.set('cast', '1');
    const avoid = this._avoid;
    if (avoid?.id) query.set('avoid', avoid.id);
    const asked = [this._server, ...this._nodes].filter((u, i, all) => all.indexOf(u) === i);
    const order = [...asked.filter((u) => u !== avoid?.url), ...asked.filter((u) => u === avoid?.url)];
    for (const server of order) {
      let res;
      try {
        res = await fetch(`${server}/api/route?${query}`, {
          headers: this._headers(),
          cache: 'no-store',
          signal: AbortSignal.timeout(ROUTE_TIMEOUT_MS),
        });
      } catch {
        continue; // gone: ask the next
      }
      // A server from before clusters: itself.
      if (res.status === 404 || res.status === 405) return this._server;
      if (!res.ok) continue; // its Redis is unreachable, or every node is full: ask another
      let route;
      try {
        route = await res.json();
      } catch {
        continue;
      }
      if (route.node === 'local' || typeof route.url !== 'string') {
        this._nodeId = null;
        return this._server;
      }
      this._nodeId = String(route.node);
      if (Array.isArray(route.nodes)) {
        this._nodes = route.nodes.map(String);
        clusterNodes.set(this._server, this._nodes);
      }
      return route.url.replace(/\/+$/, '');
    }
    return avoid?.url === this.node ? this._server : this.node;
  }

  /**
   * The node in use may have died (its event stream broke, or the media stalled): if it does not
   * answer a plain request within a second, drop the session without waiting for it (a DELETE
   * to a dead host only times out) and reconnect elsewhere at once.
   */
  async _checkNode(base) {
    if (this._stopped || !this._nodeId || base !== this.node) return;
    const id = this._nodeId;
    try {
      await fetch(`${base}/api/lives/${encodeURIComponent(this.live)}`, {
        cache: 'no-store',
        signal: AbortSignal.timeout(PROBE_TIMEOUT_MS),
      });
      return; // it answers: the usual recovery (ICE, EventSource's own retry) is enough
    } catch {
      /* gone */
    }
    if (this._stopped || base !== this.node || this._avoid?.url === base) return;
    this._avoid = { id, url: base };
    this._location = null;
    this.session = null;
    this._reconnect(new Error(`lost the server node ${base}: reconnecting to another`), true);
  }

  /**
   * The `iceServers` option, or else the node's STUN/TURN servers (`[]` if they cannot be had:
   * a direct connection may still work).
   * @returns {Promise<RTCIceServer[]>}
   */
  async _iceServers(base = this.node) {
    if (this._options.iceServers != null) return this._options.iceServers;
    const url = `${base}/api/ice-servers`;
    try {
      const res = await fetch(url, {
        headers: this._headers(),
        cache: 'no-store',
        signal: AbortSignal.timeout(ICE_SERVERS_TIMEOUT_MS),
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const { iceServers, hls } = await res.json();
      if (!Array.isArray(iceServers)) throw new Error('no iceServers array in the answer');
      /** Whether the server packages lives as LL-HLS (then casters prefer H.264). */
      this.serverHls = hls === true;
      return iceServers;
    } catch (err) {
      console.warn(`vessel: cannot get the ICE servers from ${url} (${err.message}): connecting without STUN/TURN`);
      return [];
    }
  }

  _onConnectionState(pc) {
    switch (pc.connectionState) {
      case 'connected':
        this._cancel(this._graceTimer);
        this._cancel(this._connectTimer);
        this._connected = true;
        this._attempt = 0;
        this._avoid = null;
        this._watchDtls(pc);
        this._updateState();
        break;
      case 'disconnected':
        // ICE may recover by itself; give it a few seconds (unless the node is gone).
        this._connected = false;
        this._setState('reconnecting');
        this._checkNode(this.node);
        this._cancel(this._graceTimer);
        this._graceTimer = this._later(() => {
          if (pc === this.pc && pc.connectionState !== 'connected') {
            this._reconnect(new Error('connection lost'));
          }
        }, DISCONNECT_GRACE_MS);
        break;
      case 'failed':
        this._reconnect(new Error('connection failed'));
        break;
    }
  }

  /**
   * The server ends a session with a DTLS close_notify (another caster took the live, the session
   * was deleted, a limit closed it): the DTLS transport says 'closed' at once, while the
   * connection state only turns 'disconnected' after ICE consent times out (~10-30 s). Act on it.
   */
  _watchDtls(pc) {
    const transport = [...pc.getSenders(), ...pc.getReceivers()].map((x) => x.transport).find((t) => t);
    if (!transport || transport._vesselWatched) return;
    transport._vesselWatched = true;
    transport.addEventListener('statechange', () => {
      // Not while this side is already tearing it down (its own DELETE also ends in close_notify).
      if (pc !== this.pc || this._stopped || !this._connected) return;
      if (transport.state === 'closed' || transport.state === 'failed') {
        this._reconnect(new Error('the server closed the connection'));
      }
    });
  }

  /**
   * Drops the current connection and schedules a new one, with backoff (`now`: at once, for a
   * dead node: the next node is another).
   */
  _reconnect(reason, now = false) {
    if (this._stopped) return;
    if (reason) this.emit('error', reason);
    const generation = ++this._generation; // invalidate callbacks of the current attempt
    this._connected = false;
    this._cancel(this._graceTimer);
    this._cancel(this._connectTimer);
    this._cancel(this._retryTimer);
    this._setState('reconnecting');
    this._closePeer()
      .then((deleteStatus) => this._mayReconnect(deleteStatus))
      .then((resume) => {
        if (!resume || this._stopped || generation !== this._generation) return;
        const base = now ? 0 : RETRY_DELAYS[Math.min(this._attempt, RETRY_DELAYS.length - 1)];
        this._attempt++;
        this._retryTimer = this._later(() => this._connect(), base * (0.75 + Math.random() * 0.5));
      });
  }

  /**
   * @protected Whether to reconnect after losing the connection, given the status of the
   * DELETE of the lost session (`null`: there was none, `0`: network error).
   * @returns {Promise<boolean>}
   */
  async _mayReconnect(_deleteStatus) {
    return true;
  }

  /**
   * Deletes the server session, then closes the peer connection (in this order, so that the
   * server sees the DELETE rather than a dead connection).
   * @returns {Promise<number|null>} the DELETE's status (null: no session, 0: network error)
   */
  _closePeer() {
    this._connected = false;
    const pc = this.pc;
    const close = () => {
      try {
        pc?.close();
      } catch {
        /* already closed */
      }
    };
    if (!this._location) {
      close();
      return Promise.resolve(null);
    }
    return this._deleteSession(false).then((status) => {
      close();
      return status;
    });
  }

  _deleteSession(keepalive) {
    const location = this._location;
    this._location = null;
    this.session = null;
    return location ? this._delete(location, keepalive) : Promise.resolve(null);
  }

  _delete(resource, keepalive) {
    const signal = keepalive ? undefined : AbortSignal.timeout(DELETE_TIMEOUT_MS);
    return fetch(resource, { method: 'DELETE', headers: this._headers(), keepalive, signal }).then(
      (res) => res.status,
      () => 0,
    );
  }

  /**
   * Follows the live's Server-Sent Events (`state`: onAir, viewers), from the node in use: its
   * stream breaking is also how a dead node is noticed at once.
   */
  _openEvents() {
    if (this._stopped) return;
    this._events?.close();
    const base = this.node;
    this._eventsBase = base;
    const url = new URL(`${base}/api/lives/${encodeURIComponent(this.live)}/events`);
    // A private live's state needs the viewer token (or the stream key); EventSource sends no headers.
    if (this._credential) url.searchParams.set('token', this._credential);
    const events = new EventSource(url);
    this._events = events;
    events.addEventListener('state', (e) => {
      let info;
      try {
        info = JSON.parse(e.data);
      } catch {
        return;
      }
      this._onLiveInfo(info);
    });
    // The server is stopping (a restart, usually): the handle reconnects once it is back.
    events.addEventListener('shutdown', (e) => {
      if (this._events === events) this.emit('shutdown', e.data || 'the server is shutting down');
    });
    events.addEventListener('error', () => {
      if (this._events === events) this._checkNode(base);
      // EventSource retries by itself unless it gave up (non-200 answer): then we retry.
      if (events.readyState === EventSource.CLOSED && !this._stopped && this._events === events) {
        this._later(() => this._openEvents(), 2000);
      }
    });
  }

  /** @protected */
  _onLiveInfo(info) {
    const viewers = Number(info.viewers) || 0;
    if (viewers !== this.viewers) {
      this.viewers = viewers;
      this.emit('viewers', viewers);
    }
    // Problems with the live the streamer can fix (an RTMP encoder sending B-frames), each
    // with its fix: the pages show them.
    const warnings = Array.isArray(info.warnings) ? info.warnings.map(String) : [];
    if (warnings.join('\n') !== this.warnings.join('\n')) {
      this.warnings = warnings;
      this.emit('warnings', warnings);
    }
    this.onAir = Boolean(info.onAir);
    this._updateState();
  }
}

/**
 * A live being published (WHIP). Create it with {@link publish}.
 *
 * Events:
 * - `state` (`'connecting' | 'live' | 'reconnecting' | 'unauthorized' | 'stopped' | 'failed'`):
 *   `unauthorized` = the server refused the stream key (or its absence) with 401; nothing is
 *   retried until {@link Publisher#setKey} gives one.
 * - `viewers` (number)
 * - `warnings` (string[]) — problems with the live its caster can fix, each with the fix
 *   (an RTMP encoder sending B-frames); empty when there are none.
 * - `session` (string) — the id of a new WHIP session (also in `publisher.session`): pass it
 *   to the chat ({@link Chat#setSession}) to moderate it.
 * - `shutdown` (string) — the server announced that it is stopping; the publisher reconnects
 *   by itself when it is back.
 * - `error` (Error) — also reported for errors it recovers from by reconnecting. A refused key
 *   is a {@link VesselHttpError} with `status` 401 and the server's `reason`. When another
 *   caster replaces this one (a newer WHIP POST to the same live), the publisher does not fight
 *   back: it reports an error named `VesselReplacedError` and stops.
 */
export class Publisher extends Session {
  /**
   * @param {string} live
   * @param {MediaStream} stream
   * @param {PublishOptions} [options]
   */
  constructor(live, stream, options = {}) {
    // Check the layers now, so that bad options throw here rather than on every connection.
    simulcastEncodings(stream?.getVideoTracks?.()[0], options);
    if (options.key != null && typeof options.key !== 'string') throw new TypeError('key: expected a string');
    super('whip', live, options);
    if (options.key) this._credential = options.key;
    /** The published stream. */
    this.stream = stream;
    /** @type {RTCRtpEncodingParameters[]} The video encodings offered (several: simulcast, lowest first). */
    this.encodings = [];
    /** @type {VesselHttpError|null} Why the server refused the key (state `unauthorized`). */
    this.refusal = null;
  }

  /**
   * Sets the stream key (sent as `Authorization: Bearer <key>`). In state `unauthorized` it
   * tries again at once; otherwise the key is used from the next connection on.
   * @param {string} key
   * @returns {Promise<void>} resolves once live; rejects with the {@link VesselHttpError} (401)
   *   if the server refuses this key too (state `unauthorized` again), or with an Error if the
   *   publisher fails or is stopped first.
   */
  setKey(key) {
    if (typeof key !== 'string' || !key) throw new TypeError('setKey: expected a non-empty string');
    this._credential = key;
    if (this._stopped) return Promise.reject(new Error(`the publisher is ${this.state}`));
    const outcome = this._outcome();
    if (this.state === 'unauthorized') {
      this.refusal = null;
      this._setState('connecting');
      this._connect();
    }
    return outcome;
  }

  /** Resolves when live; rejects when refused, failed or stopped first. */
  _outcome() {
    if (this.state === 'live') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onState = (state) => {
        if (state === 'live') resolve();
        else if (state === 'unauthorized') reject(this.refusal);
        else if (state === 'failed' || state === 'stopped') reject(new Error(`the publisher is ${state}`));
        else return;
        this.off('state', onState);
      };
      this.on('state', onState);
    });
  }

  /** 401: no retries; wait in state `unauthorized` for `setKey`. */
  _onUnauthorized(err, used) {
    this._generation++; // ignore the attempt's remaining callbacks (its connection timer)
    this._cancel(this._connectTimer);
    this._cancel(this._retryTimer);
    this._attempt = 0;
    this._closePeer();
    this.pc = null;
    if (used !== this._credential) {
      // setKey() came while this attempt was under way with the previous key: try the new one.
      this._connect();
      return true;
    }
    this.refusal = err;
    this.emit('error', err);
    this._setState('unauthorized');
    return true;
  }

  _preparePeer(pc) {
    const video = this._options.video ?? {};
    for (const kind of ['audio', 'video']) {
      const track = this.stream.getTracks().find((t) => t.kind === kind);
      const init = { direction: 'sendonly', streams: [this.stream] };
      if (kind === 'video') {
        // No track: nothing to send, no layers to offer.
        const encodings = simulcastEncodings(track, track ? this._options : { ...this._options, simulcast: false });
        this.encodings = encodings;
        if (encodings.length > 1 || Object.keys(encodings[0]).length) init.sendEncodings = encodings;
      }
      // Always offer audio + video; a missing track just sends nothing.
      const transceiver = pc.addTransceiver(track ?? kind, init);
      // VP8 cannot be packaged as LL-HLS (fMP4 for browsers) nor recorded as MP4: when the
      // server packages HLS, H.264 goes first unless a codec was asked for.
      const codec = video.codec ?? (this.serverHls ? 'H264' : null);
      if (kind === 'video' && codec) preferCodec(transceiver, 'video', codec);
    }
  }

  _updateState() {
    if (this._connected) this._setState('live');
  }

  /**
   * A lost session that the server no longer knows (404) while the live is on air means that
   * another caster replaced this one: stop, rather than take the live back from it.
   */
  async _mayReconnect(deleteStatus) {
    if (deleteStatus !== 404) return true;
    try {
      const url = `${this.node}/api/lives/${encodeURIComponent(this.live)}`;
      const res = await fetch(url, { headers: this._headers(), cache: 'no-store', signal: AbortSignal.timeout(POST_TIMEOUT_MS) });
      if (!res.ok || !(await res.json()).onAir) return true;
    } catch {
      return true;
    }
    if (this._stopped) return false;
    const err = new Error('another caster took over this live');
    err.name = 'VesselReplacedError';
    this.emit('error', err);
    this._finish('stopped');
    return false;
  }
}

/**
 * A live being watched (WHEP). Create it with {@link play}.
 *
 * Events:
 * - `state` (`'connecting' | 'waiting' | 'playing' | 'ended' | 'reconnecting' | 'stopped' | 'failed'`):
 *   `waiting` = connected but the live is not on air yet; `ended` = it was on air and went off.
 *   The connection is kept in both, and playback resumes by itself when the caster comes back.
 * - `stream` (MediaStream) — a new stream after each (re)connection.
 * - `viewers` (number)
 * - `warnings` (string[]) — problems with the live its caster can fix (an RTMP encoder sending
 *   B-frames), each with the fix; empty when there are none.
 * - `stats` ({@link PlayerStats}) — every second while connected and receiving video.
 * - `layer` ({@link Layer}) — after `setLayer` changed it.
 * - `session` (string) — the id of a new WHEP session (also in `player.session`).
 * - `shutdown` (string) — the server announced that it is stopping; the player reconnects by
 *   itself when it is back.
 * - `error` (Error) — a private live without a valid `token` fails with a
 *   {@link VesselHttpError} of `status` 401.
 * - `path` (`'webrtc' | 'hls'`) — the player turned to LL-HLS (option `fallback`; also in
 *   `player.path`). Over LL-HLS a VP8 live fails with a {@link VesselHttpError} of status 409.
 */
export class Player extends Session {
  /**
   * @param {string} live
   * @param {PlayOptions} [options]
   */
  constructor(live, options = {}) {
    const layer = options.layer ?? 'auto';
    checkLayer(layer);
    const fallback = options.fallback ?? false;
    if (!FALLBACKS.includes(fallback)) throw new TypeError(`invalid fallback: ${JSON.stringify(fallback)} (expected false, 'hls' or 'only')`);
    if (fallback && !options.video) throw new TypeError(`fallback '${fallback}' needs the video option (LL-HLS plays in an element)`);
    super('whep', live, options);
    /** @type {'webrtc'|'hls'} How the media arrives (see the `fallback` option). */
    this.path = fallback === 'only' ? 'hls' : 'webrtc';
    /** The LL-HLS player, once on that path (`/assets/hls-player.js`; null in Safari). */
    this.hls = null;
    this._hlsPlaying = false;
    if (fallback === 'only') queueMicrotask(() => this._useHls());
    /** @type {MediaStream|null} The received audio + video. */
    this.stream = null;
    /** @type {HTMLVideoElement|null} */
    this.video = options.video ?? null;
    /** @type {Layer} The quality asked for (see {@link Player#setLayer}). */
    this.layer = layer;
    /** @type {PlayerStats|null} The last `stats` sample. */
    this.stats = null;
    this._wasOnAir = false;
    this._layerUrl = null; // the session's layer-selection URL, from the answer's Link header
    this._layerQueue = Promise.resolve();
    this._statsBase = null;
    queueMicrotask(() => this._sampleStats());
  }

  /**
   * Caps the quality this viewer receives: `'auto'` (default) = the best layer its link
   * carries; `'high'` / `'medium'` / `'low'` = the top / middle / lowest simulcast layer (still
   * lower when the link cannot carry it). Kept across reconnections.
   * @param {Layer} layer
   * @returns {Promise<boolean>} whether the server applied it (`false`: not connected yet, or a
   *   server or live without layers; it is sent with each new connection). Rejects with a
   *   {@link VesselHttpError} when the server refuses it.
   */
  setLayer(layer) {
    checkLayer(layer);
    if (layer !== this.layer) {
      this.layer = layer;
      this.emit('layer', layer);
    }
    return this._sendLayer();
  }

  /** POSTs the current `layer` to the session's layer URL (in order, one at a time). */
  _sendLayer() {
    const send = async () => {
      const url = this._layerUrl;
      if (!url || this._stopped) return false;
      const res = await fetch(url, {
        method: 'POST',
        headers: this._headers({ 'Content-Type': 'application/json' }),
        body: JSON.stringify({ layer: this.layer }),
        signal: AbortSignal.timeout(POST_TIMEOUT_MS),
      });
      if (!res.ok) {
        const reason = (await res.text().catch(() => '')).trim();
        // The session went away (reconnection under way): the next one gets the layer.
        if (res.status === 404 && url !== this._layerUrl) return false;
        throw new VesselHttpError(res.status, reason);
      }
      return url === this._layerUrl;
    };
    const done = this._layerQueue.then(send, send);
    this._layerQueue = done.catch(() => {});
    return done;
  }

  _onSession(res) {
    // The server answered over HTTP: from now on, if the media cannot get through (ICE never
    // connects), LL-HLS over that same HTTP will. Not while the server is down or refuses.
    if (this._options.fallback === 'hls' && !this._fallbackTimer && !this._everConnected) {
      this._fallbackTimer = this._later(() => {
        if (!this._connected && !this._everConnected) this._useHls();
      }, HLS_FALLBACK_MS);
    }
    this._layerUrl = linkTarget(res.headers.get('Link'), LAYER_REL, res.url);
    if (this._layerUrl && this.layer !== 'auto') {
      this._sendLayer().catch((err) => this.emit('error', err));
    }
  }

  /**
   * Turns to LL-HLS for good: the WebRTC attempt ends (its server session deleted), the live's
   * event stream stays (viewers, on air).
   */
  async _useHls() {
    if (this._stopped || this._hlsStarted) return;
    this._hlsStarted = true;
    this.path = 'hls';
    this._generation++; // ignore the WebRTC attempt's callbacks
    for (const t of [this._connectTimer, this._retryTimer, this._graceTimer]) this._cancel(t);
    this._closePeer();
    this.pc = null;
    this.stream = null;
    this.emit('path', 'hls');
    this._setState('connecting');
    const url = new URL(`${this._server}/hls/${encodeURIComponent(this.live)}/index.m3u8`);
    if (this._credential) url.searchParams.set('token', this._credential);
    const video = this.video;
    video.srcObject = null;
    let mod;
    try {
      mod = await import(`${this._server}/assets/hls-player.js`);
    } catch (err) {
      this.emit('error', new Error(`cannot load the LL-HLS player from ${this._server}/assets/hls-player.js (${err.message}): reload the page`));
      this._finish('failed');
      return;
    }
    if (this._stopped) return;
    if (mod.nativeHls(video)) {
      // Safari / iOS: the browser's own HLS (it does LL-HLS too).
      video.src = url.href;
      video.addEventListener('playing', () => { this._hlsPlaying = true; this._updateState(); });
      video.play().catch(() => {});
      return;
    }
    const hls = new mod.HlsPlayer(video, url.href);
    this.hls = hls;
    hls.on('state', (s) => {
      this._hlsPlaying = s === 'playing';
      this._updateState();
    });
    hls.on('error', (err) => {
      this.emit('error', err.status ? Object.assign(new VesselHttpError(err.status, err.reason), { path: 'hls' }) : err);
    });
  }

  _connect() {
    if (this.path !== 'hls') return super._connect();
  }

  _reconnect(reason, now) {
    if (this.path !== 'hls') super._reconnect(reason, now);
  }

  /** Samples the received video every second: `stats` event, `stats` property. */
  async _sampleStats() {
    if (this._stopped) return;
    const pc = this.pc;
    let stats = null;
    try {
      if (pc && this._connected) stats = this._rates(pc, await pc.getStats());
      else if (this.path === 'hls' && this._hlsPlaying) stats = this._hlsStats();
    } catch {
      /* connection closed meanwhile */
    }
    if (stats && !this._stopped && pc === this.pc) {
      this.stats = stats;
      this.emit('stats', stats);
    }
    if (!this._stopped) this._later(() => this._sampleStats(), STATS_INTERVAL_MS);
  }

  /**
   * The received video's stats, with rates since the previous sample of the same connection
   * (null on the first sample, or without video).
   * @returns {PlayerStats|null}
   */
  _rates(pc, report) {
    let video = null;
    for (const s of report.values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video') video = s;
    }
    if (!video || pc !== this.pc) return null;
    const base = this._statsBase?.pc === pc ? this._statsBase : null;
    const bytes = video.bytesReceived ?? 0;
    const frames = video.framesDecoded ?? 0;
    this._statsBase = { pc, timestamp: video.timestamp, bytes, frames };
    const seconds = base ? (video.timestamp - base.timestamp) / 1000 : 0;
    if (seconds <= 0) return null;
    return {
      width: video.frameWidth ?? 0,
      height: video.frameHeight ?? 0,
      fps: Math.round(((frames - base.frames) / seconds) * 10) / 10,
      bitrateKbps: Math.round(((bytes - base.bytes) * 8) / seconds / 1000),
      framesDecoded: frames,
      packetsLost: video.packetsLost ?? 0,
      nackCount: video.nackCount ?? 0,
      freezeCount: video.freezeCount ?? 0,
      totalFreezesDuration: video.totalFreezesDuration ?? 0,
      codec: report.get(video.codecId)?.mimeType ?? null,
      layer: this.layer,
      candidate: selectedCandidate(report),
      path: 'webrtc',
      delay: null,
    };
  }

  /** @returns {PlayerStats} over LL-HLS. */
  _hlsStats() {
    const v = this.video;
    const q = v.getVideoPlaybackQuality?.() ?? {};
    const frames = q.totalVideoFrames ?? 0;
    const base = this._hlsBase;
    const now = performance.now();
    this._hlsBase = { now, frames };
    return {
      width: v.videoWidth,
      height: v.videoHeight,
      fps: base ? Math.round(((frames - base.frames) / ((now - base.now) / 1000)) * 10) / 10 : 0,
      bitrateKbps: this.hls?.bitrateKbps ?? 0,
      framesDecoded: frames,
      packetsLost: 0,
      nackCount: 0,
      freezeCount: 0,
      totalFreezesDuration: 0,
      codec: this.hls?.rendition?.codecs ?? null,
      layer: this.layer,
      candidate: null,
      path: 'hls',
      delay: this.hls?.delay ?? null,
    };
  }

  _preparePeer(pc) {
    this._layerUrl = null;
    const audio = pc.addTransceiver('audio', { direction: 'recvonly' });
    const video = pc.addTransceiver('video', { direction: 'recvonly' });
    // The receivers' tracks exist already; media flows once the caster is on air.
    const stream = new MediaStream([audio.receiver.track, video.receiver.track]);
    this.stream = stream;
    if (this.video) {
      // A <video> delays the page's load event until its first frame: attach after `load`,
      // or the tab shows "loading" for as long as the live is not on air.
      afterLoad(() => {
        if (this.stream !== stream || !this.video) return;
        this.video.srcObject = stream;
        this.video.play().catch(() => {
          /* autoplay policy: the page shows its own controls */
        });
      });
    }
    this.emit('stream', stream);
  }

  _onLiveInfo(info) {
    if (info.onAir) this._wasOnAir = true;
    super._onLiveInfo(info);
  }

  _updateState() {
    if (this._connected) this._everConnected = true;
    if (this.path === 'hls' && !this._stopped) {
      if (this.onAir) this._setState(this._hlsPlaying ? 'playing' : 'connecting');
      else this._setState(this._wasOnAir ? 'ended' : 'waiting');
      return;
    }
    if (!this._connected || this._stopped) return;
    if (this.onAir) this._setState('playing');
    else this._setState(this._wasOnAir ? 'ended' : 'waiting');
  }

  stop() {
    const done = super.stop();
    this.hls?.stop();
    if (this.video && this.video.srcObject === this.stream) this.video.srcObject = null;
    return done;
  }
}

/**
 * Publishes `stream` as the live `live` (replacing its current caster, if any).
 * Returns at once; follow `state` events for the outcome.
 * @param {string} live
 * @param {MediaStream} stream
 * @param {PublishOptions} [options]
 * @returns {Publisher}
 */
export function publish(live, stream, options) {
  return new Publisher(live, stream, options);
}

/**
 * Plays the live `live`. It may be opened before the live starts: it then waits for it.
 * @param {string} live
 * @param {PlayOptions} [options]
 * @returns {Player}
 */
export function play(live, options) {
  return new Player(live, options);
}

/**
 * @typedef {object} ChatOptions
 * @property {string} [server] Base URL of the Vessel server (default: where this module was
 *   loaded from).
 * @property {string} [name] Display name (the server keeps at most 32 characters, and calls a
 *   nameless viewer `viewer`); change it with {@link Chat#setName}.
 * @property {string} [token] A private live's viewer token (sent as `?token=`: browsers cannot
 *   set headers on a WebSocket).
 * @property {string} [session] The caster's WHIP session id (`publisher.session`): the chat
 *   connection of the live's current caster is its moderator (may remove messages, and its
 *   messages are marked `caster`). Change it with {@link Chat#setSession}.
 *
 * @typedef {object} ChatMessage
 * @property {number} id Increasing within the live: the order everyone sees.
 * @property {string} name The sender's display name.
 * @property {string} text
 * @property {number} at When the server took it (Unix milliseconds).
 * @property {boolean} caster Sent by the live's caster.
 *
 * @typedef {object} ChatWelcome
 * @property {string} name This connection's display name, as the server cleaned it.
 * @property {boolean} moderator Whether this connection may remove messages.
 */

/** Messages `send()` keeps while the chat is not connected (sent once it is). */
const CHAT_OUTBOX_MAX = 20;

/** A chat message or command the server refused (`reason`: its text), or a bad server frame. */
/** Messages a {@link Chat} keeps, as many as the server's history. */
const MAX_CHAT_MESSAGES = 200;

export class VesselChatError extends Error {
  /** @param {string} reason */
  constructor(reason) {
    super(reason);
    this.name = 'VesselChatError';
    /** The server's reason, e.g. `too many messages: wait 1500 ms`. */
    this.reason = reason;
  }
}

/**
 * A live's chat (a WebSocket to `{server}/api/lives/{live}/chat`). Create it with {@link chat}.
 *
 * It reconnects by itself, with backoff, asking for the messages after the last one it has
 * (`?since=`): none is lost or shown twice, and `messages` stays in id order. After a server
 * restart (the server keeps the history in memory) it starts over with a `reset` event. The
 * server also tells a returning client of removals made while it was away (`removed`).
 * `messages` keeps the last 200, as the server does.
 *
 * Events:
 * - `state` (`'connecting' | 'open' | 'reconnecting' | 'closed'`)
 * - `welcome` ({@link ChatWelcome}) — on every (re)connection, before its messages.
 * - `message` ({@link ChatMessage}) — in id order, history first.
 * - `removed` (number) — the caster removed the message with this id.
 * - `reset` — the server lost its history (it restarted): forget the messages shown.
 * - `shutdown` — the server is stopping; the chat reconnects once it is back.
 * - `error` ({@link VesselChatError}) — a refused message or removal (too long, too fast, not
 *   the moderator, …); the connection stays open.
 */
export class Chat extends Emitter {
  /**
   * @param {string} live
   * @param {ChatOptions} [options]
   */
  constructor(live, options = {}) {
    super();
    if (!LIVE_NAME.test(live)) throw new TypeError(`invalid live name: ${JSON.stringify(live)}`);
    /** The live's name. */
    this.live = live;
    /** Display name: the one asked for, then the server's (cleaned) one once welcomed. */
    this.name = options.name ?? '';
    /** Whether this connection may remove messages (the live's caster). */
    this.moderator = false;
    /** Current state (see the `state` event). */
    this.state = 'connecting';
    /** @type {ChatMessage[]} The messages received and not removed, in id order. */
    this.messages = [];
    /** The highest message id received (0: none). */
    this.lastId = 0;

    this._server = (options.server ?? DEFAULT_SERVER).replace(/\/+$/, '');
    /** Base URL of the node the chat is connected to (`server`, or another node of its cluster). */
    this.node = this._server;
    this._welcomed = false; // whether the current connection was welcomed
    this._name = options.name ?? '';
    this._token = options.token ?? null;
    this._session = options.session ?? null;
    this._ws = null;
    this._since = 0; // the `since` of the current connection
    this._open = false;
    this._closed = false;
    this._attempt = 0;
    this._timer = null;
    this._restarted = false; // the server said it was stopping: its history will be gone
    this._outbox = [];
    queueMicrotask(() => this._connect());
  }

  /**
   * Sends a message. While the chat is (re)connecting, it is kept and sent once connected.
   * Refusals (too long, too many) come back as `error` events.
   * @param {string} text
   * @returns {boolean} false if nothing was sent (empty text, closed, or too many waiting).
   */
  send(text) {
    const t = String(text ?? '');
    if (this._closed || !t.trim()) return false;
    return this._frame({ type: 'say', text: t });
  }

  /**
   * Removes a message for everyone (the moderator only; others get an `error`).
   * @param {number} id
   * @returns {boolean} false if nothing was sent.
   */
  remove(id) {
    if (this._closed || !Number.isSafeInteger(Number(id))) return false;
    return this._frame({ type: 'remove', id: Number(id) });
  }

  /**
   * Changes the display name (reconnects; nothing is missed).
   * @param {string} name
   */
  setName(name) {
    name = String(name ?? '');
    if (name === this._name) return;
    this._name = name;
    this.name = name;
    this._restart();
  }

  /**
   * Sets the caster's WHIP session id (`publisher.session`, or the publisher's `session`
   * event), which makes this connection the moderator: reconnects with it (nothing is missed).
   * `null` is ignored: the server honours the last session of a live's caster.
   *
   * In a cluster only the node the caster casts to knows its session, so pass that node too
   * (`publisher.node`): the chat moves there. The room is the same on every node.
   * @param {string|null} session
   * @param {string} [node] Base URL of the node the session is on.
   */
  setSession(session, node) {
    if (!session) return;
    const base = node ? String(node).replace(/\/+$/, '') : this.node;
    if (session === this._session && base === this.node) return;
    this._session = String(session);
    this.node = base;
    this._restart();
  }

  /** Closes the chat for good. Idempotent. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    const ws = this._ws;
    this._ws = null;
    this._open = false;
    this._outbox = [];
    try {
      ws?.close(1000);
    } catch {
      /* already closed */
    }
    this._setState('closed');
  }

  // ---- internals ----

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.emit('state', state);
  }

  _frame(frame) {
    const data = JSON.stringify(frame);
    if (this._open && this._ws?.readyState === WebSocket.OPEN) {
      this._ws.send(data);
      return true;
    }
    if (this._outbox.length >= CHAT_OUTBOX_MAX) return false;
    this._outbox.push(data);
    return true;
  }

  /** Drops the current connection and opens a new one now. */
  _restart() {
    if (this._closed) return;
    clearTimeout(this._timer);
    const ws = this._ws;
    this._ws = null;
    this._open = false;
    try {
      ws?.close(1000);
    } catch {
      /* already closed */
    }
    this._connect();
  }

  _connect() {
    if (this._closed || this._ws) return;
    const url = new URL(`${this.node}/api/lives/${encodeURIComponent(this.live)}/chat`);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    if (this._name) url.searchParams.set('name', this._name);
    // After a shutdown the server's history is gone: ask for all of it, and start over.
    const since = this._restarted ? 0 : this.lastId;
    if (since > 0) url.searchParams.set('since', String(since));
    if (this._token) url.searchParams.set('token', this._token);
    if (this._session) url.searchParams.set('session', this._session);
    let ws;
    try {
      ws = new WebSocket(url.href);
    } catch (err) {
      this.emit('error', new VesselChatError(`cannot open the chat: ${err.message}`));
      this._retry();
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    this._since = since;
    ws.addEventListener('message', (e) => {
      if (ws !== this._ws) return;
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      this._onFrame(frame);
    });
    ws.addEventListener('close', () => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._open = false;
      this._retry();
    });
  }

  /**
   * Reconnects after a delay (backoff with jitter). A connection that closed before its welcome
   * may mean its node is gone: in a cluster (a player or publisher of this page learnt its
   * nodes), the next attempt goes to the next node; a chat room spans the cluster's nodes.
   */
  _retry() {
    if (this._closed) return;
    if (!this._welcomed) {
      const nodes = [this._server, ...(clusterNodes.get(this._server) ?? [])].filter((u, i, all) => all.indexOf(u) === i);
      this.node = nodes[(nodes.indexOf(this.node) + 1) % nodes.length];
    }
    this._setState('reconnecting');
    const base = RETRY_DELAYS[Math.min(this._attempt, RETRY_DELAYS.length - 1)];
    this._attempt++;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), base * (0.75 + Math.random() * 0.5));
  }

  _onFrame(frame) {
    switch (frame?.type) {
      case 'welcome': {
        if (this._restarted) {
          this._restarted = false;
          this._reset();
        }
        this._open = true;
        this._welcomed = true;
        this._attempt = 0;
        this.name = String(frame.name ?? this._name);
        this.moderator = Boolean(frame.moderator);
        this._setState('open');
        this.emit('welcome', { name: this.name, moderator: this.moderator });
        const outbox = this._outbox;
        this._outbox = [];
        for (const data of outbox) this._ws?.send(data);
        break;
      }
      case 'message': {
        const id = Number(frame.id);
        if (!Number.isSafeInteger(id) || id <= 0) return;
        // On one server, a connection opened with `since` only gets later ids: an older one
        // means the server restarted (its ids start again) without telling us.
        if (id <= this._since) {
          this._since = 0;
          this._reset();
        }
        // Ids only grow on one server: anything not newer is a message we already have.
        if (id <= this.lastId && this.messages.some((m) => m.id === id)) return; // never twice
        const message = {
          id,
          name: String(frame.name ?? ''),
          text: String(frame.text ?? ''),
          at: Number(frame.at) || 0,
          caster: Boolean(frame.caster),
        };
        let at = this.messages.length;
        while (at > 0 && this.messages[at - 1].id > id) at--;
        this.messages.splice(at, 0, message);
        if (this.messages.length > MAX_CHAT_MESSAGES) this.messages.shift();
        if (id > this.lastId) this.lastId = id;
        this.emit('message', message);
        break;
      }
      case 'removed': {
        const id = Number(frame.id);
        this.messages = this.messages.filter((m) => m.id !== id);
        this.emit('removed', id);
        break;
      }
      case 'error':
        this.emit('error', new VesselChatError(String(frame.reason ?? 'refused')));
        break;
      case 'shutdown':
        this._restarted = true;
        this.emit('shutdown');
        break;
    }
  }

  _reset() {
    this.messages = [];
    this.lastId = 0;
    this.emit('reset');
  }
}

/**
 * Joins the chat of the live `live`.
 * @param {string} live
 * @param {ChatOptions} [options]
 * @returns {Chat}
 */
export function chat(live, options) {
  return new Chat(live, options);
}

/**
 * The live name in this page's path (`/cast/{live}`, `/play/{live}`) or in `?live=`.
 * @returns {string|null}
 */
export function liveFromLocation(loc = globalThis.location) {
  const fromPath = loc.pathname.match(/^\/(?:cast|play)\/([^/]+)\/?$/);
  let name = fromPath ? fromPath[1] : new URLSearchParams(loc.search).get('live');
  try {
    name = name && decodeURIComponent(name);
  } catch {
    return null;
  }
  return name && LIVE_NAME.test(name) ? name : null;
}

/** An RTCPeerConnection; ICE servers it refuses (malformed) are dropped with a warning. */
function newPeerConnection(iceServers, iceTransportPolicy) {
  try {
    return new RTCPeerConnection({ iceServers, iceTransportPolicy });
  } catch (err) {
    if (!iceServers.length) throw err;
    console.warn(`vessel: unusable ICE servers (${err.message}): connecting without STUN/TURN`);
    return new RTCPeerConnection({ iceServers: [], iceTransportPolicy });
  }
}

/**
 * The selected candidate pair in a `getStats()` report.
 * @returns {CandidateInfo|null}
 */
function selectedCandidate(report) {
  let pair = null;
  for (const s of report.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) ?? pair;
  }
  if (!pair) {
    for (const s of report.values()) {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    }
  }
  const local = pair && report.get(pair.localCandidateId);
  if (!local) return null;
  const remote = report.get(pair.remoteCandidateId);
  const where = (c) => (c?.address ? `${c.address.includes(':') ? `[${c.address}]` : c.address}:${c.port}` : null);
  const relayProtocol = local.candidateType === 'relay' ? (local.relayProtocol ?? null) : null;
  return {
    type: local.candidateType,
    protocol: local.protocol,
    relayProtocol,
    transport: relayProtocol ?? local.protocol,
    local: where(local),
    remote: where(remote),
  };
}

function afterLoad(fn) {
  if (!globalThis.document || document.readyState === 'complete') fn();
  else globalThis.addEventListener('load', fn, { once: true });
}

function preferCodec(transceiver, kind, codec) {
  const codecs = globalThis.RTCRtpReceiver?.getCapabilities?.(kind)?.codecs;
  if (!codecs || !transceiver.setCodecPreferences) return;
  const wanted = `${kind}/${codec}`.toLowerCase();
  const sorted = [
    ...codecs.filter((c) => c.mimeType.toLowerCase() === wanted),
    ...codecs.filter((c) => c.mimeType.toLowerCase() !== wanted),
  ];
  try {
    transceiver.setCodecPreferences(sorted);
  } catch {
    /* unsupported: keep the browser's order */
  }
}

function checkLayer(layer) {
  if (!LAYERS.includes(layer)) throw new TypeError(`invalid layer: ${JSON.stringify(layer)} (expected one of ${LAYERS.join(', ')})`);
}

/**
 * How many simulcast layers Chromium sends for a track of this size: it drops the top
 * encodings of small tracks (960×540 and up: 3; 480×270 and up: 2; smaller: 1). Sending fewer
 * layers ourselves keeps the full size instead.
 */
function layerCount(track) {
  const { width, height } = track?.getSettings?.() ?? {};
  if (!width || !height) return 3;
  const pixels = width * height;
  if (pixels >= 960 * 540) return 3;
  if (pixels >= 480 * 270) return 2;
  return 1;
}

/**
 * The video encodings `publish()` offers for `track` with these options: the simulcast layers
 * (lowest first, each with its rid), or a single encoding (no rid) without simulcast.
 * @param {MediaStreamTrack|undefined} track
 * @param {PublishOptions} [options]
 * @returns {RTCRtpEncodingParameters[]}
 */
export function simulcastEncodings(track, options = {}) {
  const video = options.video ?? {};
  const positive = (v, what) => {
    if (v != null && !(typeof v === 'number' && v > 0)) throw new TypeError(`invalid ${what}: ${JSON.stringify(v)}`);
    return v;
  };
  for (const key of ['maxBitrate', 'maxFramerate', 'scaleResolutionDownBy']) positive(video[key], `video.${key}`);
  const single = {};
  for (const key of ['maxBitrate', 'maxFramerate', 'scaleResolutionDownBy']) {
    if (video[key] != null) single[key] = video[key];
  }
  if (options.simulcast === false) return [single];

  let layers;
  if (options.layers != null) {
    if (!Array.isArray(options.layers) || options.layers.length === 0) throw new TypeError('layers: expected a non-empty array');
    const rids = new Set();
    layers = options.layers.map((l, i) => {
      if (!l || !RID.test(l.rid ?? '')) throw new TypeError(`layers[${i}].rid: expected 1-16 letters, digits, "-" or "_"`);
      if (rids.has(l.rid)) throw new TypeError(`layers[${i}].rid: ${l.rid} used twice`);
      rids.add(l.rid);
      positive(l.scaleResolutionDownBy, `layers[${i}].scaleResolutionDownBy`);
      positive(l.maxBitrate, `layers[${i}].maxBitrate`);
      positive(l.maxFramerate, `layers[${i}].maxFramerate`);
      return l;
    });
  } else {
    layers = DEFAULT_LAYERS.slice(DEFAULT_LAYERS.length - layerCount(track));
  }
  if (layers.length === 1) {
    const [l] = layers;
    const one = { ...single };
    if (l.maxBitrate != null && video.maxBitrate == null) one.maxBitrate = l.maxBitrate;
    if (l.maxFramerate != null && video.maxFramerate == null) one.maxFramerate = l.maxFramerate;
    const scale = (l.scaleResolutionDownBy ?? 1) * (video.scaleResolutionDownBy ?? 1);
    if (scale !== 1) one.scaleResolutionDownBy = scale;
    return [one];
  }
  return layers.map((l, i) => {
    const e = { rid: l.rid, scaleResolutionDownBy: (l.scaleResolutionDownBy ?? 1) * (video.scaleResolutionDownBy ?? 1) };
    const maxBitrate = i === layers.length - 1 && video.maxBitrate != null ? video.maxBitrate : l.maxBitrate;
    if (maxBitrate != null) e.maxBitrate = maxBitrate;
    const maxFramerate = l.maxFramerate ?? video.maxFramerate;
    if (maxFramerate != null) e.maxFramerate = maxFramerate;
    return e;
  });
}

/** The target of the first `Link` (RFC 8288) with relation `rel`, resolved against `base`. */
function linkTarget(header, rel, base) {
  if (!header) return null;
  for (const part of header.split(/,(?=\s*<)/)) {
    const m = part.match(/^\s*<([^>]*)>(.*)$/s);
    if (!m) continue;
    const r = m[2].match(/;\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))/i);
    const rels = (r?.[1] ?? r?.[2] ?? '').split(/\s+/);
    if (rels.includes(rel)) {
      try {
        return new URL(m[1], base).href;
      } catch {
        return null;
      }
    }
  }
  return null;
}
