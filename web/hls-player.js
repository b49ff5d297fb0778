/**
 * A small LL-HLS player on Media Source Extensions, for browsers without native HLS (all but
 * Safari): the fallback when WebRTC cannot connect, and the recordings' VOD playlists.
 *
 * ```js
 * import { HlsPlayer } from '/assets/hls-player.js';
 * const hls = new HlsPlayer(video, '/hls/demo/index.m3u8');            // live
 * hls.on('state', (s) => …);   // 'loading' | 'waiting' | 'playing' | 'failed' | 'stopped'
 * hls.delay;                   // s behind the wall clock (PROGRAM-DATE-TIME of the frame shown)
 * new HlsPlayer(video, '/recordings/x.m3u8', { vod: true });          // a recording, seekable
 * ```
 *
 * What Vessel emits (and all this reads): a multivariant playlist whose renditions each carry
 * video and audio muxed in one fMP4 (CODECS lists both), media playlists with EXT-X-PART,
 * blocking reload (`_HLS_msn` / `_HLS_part`), PART-HOLD-BACK, PROGRAM-DATE-TIME, and a new
 * EXT-X-MAP after an EXT-X-DISCONTINUITY when another caster takes over. VOD playlists: one
 * file, EXT-X-MAP and segments as byte ranges of it, EXT-X-ENDLIST.
 *
 * Live: start PART-HOLD-BACK behind the edge (at the independent part before it), then fetch
 * each next part as soon as a blocking reload lists it. Playback more than CATCH_UP_SEEK_S
 * past the target seeks forward; a little behind plays at CATCH_UP_RATE until back.
 * No ABR: it picks the highest rendition that fits the element (renditions are simulcast
 * layers with timelines of their own, so switching would need a re-sync).
 *
 * @module hls-player
 */

/** Further behind the target than this (s): seek to the target rather than speed up. */
const CATCH_UP_SEEK_S = 1.5;
/**
 * Behind the target by more than a part plus this (s): play a little faster. The buffered end
 * jumps by a part at a time: within a part of the target is on target.
 */
const CATCH_UP_SLACK_S = 0.25;
const CATCH_UP_RATE = 1.08;
/** Closer to the edge than the target by more than a part: play a little slower. */
const SLOW_DOWN_RATE = 0.92;
/** Each stall moves the target back by a part, up to this many parts (like hls.js). */
const MAX_STALL_PARTS = 4;
/** Media kept behind the playhead (s); older is removed from the SourceBuffer. */
const KEEP_BEHIND_S = 20;
/** VOD: media fetched ahead of the playhead (s). */
const VOD_AHEAD_S = 30;
/** Waits between attempts when the live is not there (yet) or a request failed (ms). */
const RETRY_MS = 1000;
/** Failed requests in a row before a re-sync from the multivariant playlist. */
const MAX_FAILURES = 4;

/** An HTTP error with the server's reason (its text says what to do). */
export class HlsHttpError extends Error {
  constructor(status, reason, url) {
    super(`HTTP ${status} for ${url.split('?')[0]}${reason ? `: ${reason}` : ''}`);
    this.name = 'HlsHttpError';
    this.status = status;
    this.reason = reason;
  }
}

/**
 * Whether to give the browser the playlist's URL rather than use this player: Safari and iOS
 * play (LL-)HLS themselves. Recent Chromium answers canPlayType "maybe" too, but its own HLS
 * is not low-latency and missing from some builds (headless Debian's plays nothing): MSE there.
 */
export function nativeHls(video) {
  if (!mseSupported()) return Boolean(video.canPlayType('application/vnd.apple.mpegurl'));
  return Boolean(video.canPlayType('application/vnd.apple.mpegurl')) && !globalThis.chrome && !navigator.userAgentData;
}

/** Whether this player can run here (Media Source Extensions). */
export function mseSupported() {
  return typeof globalThis.MediaSource === 'function';
}

/** `NAME=value` attributes of a tag line (quotes removed). */
function attrs(line) {
  const out = {};
  const body = line.slice(line.indexOf(':') + 1);
  for (const m of body.matchAll(/([A-Z0-9-]+)=("[^"]*"|[^,]*)/g)) out[m[1]] = m[2].replace(/^"|"$/g, '');
  return out;
}

/** `len@off` → { offset, length } (`off` defaults to right after `prev`). */
function byteRange(text, prev) {
  const [len, off] = text.split('@');
  const offset = off != null ? Number(off) : prev ? prev.offset + prev.length : 0;
  return { offset, length: Number(len) };
}

/** The renditions of a multivariant playlist, highest bandwidth first. */
export function parseMultivariant(text, base) {
  const lines = text.split('\n').map((l) => l.trim());
  const variants = [];
  lines.forEach((line, i) => {
    if (!line.startsWith('#EXT-X-STREAM-INF:')) return;
    const a = attrs(line);
    const uri = lines.slice(i + 1).find((l) => l && !l.startsWith('#'));
    if (!uri) return;
    const [w, h] = (a.RESOLUTION ?? '0x0').split('x').map(Number);
    variants.push({ url: new URL(uri, base).href, bandwidth: Number(a.BANDWIDTH) || 0, width: w, height: h, codecs: a.CODECS ?? '' });
  });
  return variants.sort((x, y) => y.bandwidth - x.bandwidth);
}

/**
 * A media playlist: its segments (`msn`, `discontinuity`, `map` {url, range}, `pdt` ms,
 * `parts` [{url, duration, independent}], `url`/`duration`/`range` once complete), and the
 * server's hints.
 */
export function parseMedia(text, base) {
  const pl = { segments: [], mediaSequence: 0, partTarget: 0, partHoldBack: 0, targetDuration: 0, ended: false, vod: false };
  let seg = null;
  let map = null;
  let disc = false;
  let range = null;
  let lastRange = null;
  let duration = 0;
  const open = () => {
    seg ??= { msn: pl.mediaSequence + pl.segments.length, discontinuity: disc, map, pdt: null, parts: [], url: null, duration: 0, range: null };
    disc = false;
    return seg;
  };
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const value = line.slice(line.indexOf(':') + 1);
    if (line.startsWith('#EXT-X-TARGETDURATION:')) pl.targetDuration = Number(value);
    else if (line.startsWith('#EXT-X-MEDIA-SEQUENCE:')) pl.mediaSequence = Number(value);
    else if (line.startsWith('#EXT-X-PART-INF:')) pl.partTarget = Number(attrs(line)['PART-TARGET']) || 0;
    else if (line.startsWith('#EXT-X-SERVER-CONTROL:')) pl.partHoldBack = Number(attrs(line)['PART-HOLD-BACK']) || 0;
    else if (line.startsWith('#EXT-X-ENDLIST')) pl.ended = true;
    else if (line.startsWith('#EXT-X-PLAYLIST-TYPE:')) pl.vod = value === 'VOD';
    else if (line === '#EXT-X-DISCONTINUITY') disc = true;
    else if (line.startsWith('#EXT-X-MAP:')) {
      const a = attrs(line);
      map = { url: new URL(a.URI, base).href, range: a.BYTERANGE ? byteRange(a.BYTERANGE, null) : null };
    } else if (line.startsWith('#EXT-X-PROGRAM-DATE-TIME:')) open().pdt = Date.parse(value);
    else if (line.startsWith('#EXT-X-PART:')) {
      const a = attrs(line);
      open().parts.push({ url: new URL(a.URI, base).href, duration: Number(a.DURATION), independent: a.INDEPENDENT === 'YES' });
    } else if (line.startsWith('#EXT-X-BYTERANGE:')) range = byteRange(value, lastRange);
    else if (line.startsWith('#EXTINF:')) duration = parseFloat(value);
    else if (line.startsWith('#EXT-X-PRELOAD-HINT:')) pl.preloadHint = new URL(attrs(line).URI, base).href;
    else if (!line.startsWith('#')) {
      const s = open();
      Object.assign(s, { url: new URL(line, base).href, duration, range });
      lastRange = range;
      range = null;
      pl.segments.push(s);
      seg = null;
    }
  }
  if (seg?.parts.length) pl.segments.push(seg); // the segment in progress
  pl.partHoldBack ||= 3 * (pl.partTarget || pl.targetDuration);
  return pl;
}

/**
 * The RFC 6381 codecs of an fMP4 init segment: `avc1.PPCCLL` from its avcC box, `opus` or
 * `mp4a.40.2` for its audio (enough for what Vessel records).
 */
export function codecsOfInit(bytes) {
  const find = (name) => {
    const code = [...name].map((c) => c.charCodeAt(0));
    for (let i = 4; i + 4 <= bytes.length; i++) {
      if (code.every((c, k) => bytes[i + k] === c)) return i;
    }
    return -1;
  };
  const out = [];
  const avcC = find('avcC');
  if (avcC >= 0) out.push(`avc1.${[1, 2, 3].map((k) => bytes[avcC + 4 + k].toString(16).padStart(2, '0')).join('')}`);
  if (find('Opus') >= 0) out.push('opus');
  else if (find('mp4a') >= 0) out.push('mp4a.40.2');
  return out.join(',') || 'avc1.42e01f';
}

/** The boxes in `bytes` from `start` to `end`: [{ type, start (of the payload), end }]. */
function boxes(bytes, start = 0, end = bytes.length) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = [];
  for (let at = start; at + 8 <= end; ) {
    const size = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (size < 8 || at + size > end) break;
    out.push({ type, start: at + 8, end: at + size });
    at += size;
  }
  return out;
}

/** A box's children by path, e.g. `child(bytes, box, 'mdia', 'mdhd')`. */
function child(bytes, box, ...path) {
  for (const type of path) {
    box = boxes(bytes, box.start, box.end).find((b) => b.type === type);
    if (!box) return null;
  }
  return box;
}

/** Timescale of each track of an init segment: Map(track id → ticks per second). */
export function timescalesOfInit(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Map();
  const moov = boxes(bytes).find((b) => b.type === 'moov');
  for (const trak of moov ? boxes(bytes, moov.start, moov.end).filter((b) => b.type === 'trak') : []) {
    const tkhd = child(bytes, trak, 'tkhd');
    const mdhd = child(bytes, trak, 'mdia', 'mdhd');
    if (!tkhd || !mdhd) continue;
    const id = view.getUint32(tkhd.start + (bytes[tkhd.start] === 1 ? 20 : 12));
    out.set(id, view.getUint32(mdhd.start + (bytes[mdhd.start] === 1 ? 20 : 12)));
  }
  return out;
}

/** The earliest decode time (s) of a media fragment (moof > traf > tfdt). */
export function startOfFragment(bytes, timescales) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let start = Infinity;
  for (const moof of boxes(bytes).filter((b) => b.type === 'moof')) {
    for (const traf of boxes(bytes, moof.start, moof.end).filter((b) => b.type === 'traf')) {
      const tfhd = child(bytes, traf, 'tfhd');
      const tfdt = child(bytes, traf, 'tfdt');
      if (!tfhd || !tfdt) continue;
      const scale = timescales.get(view.getUint32(tfhd.start + 4)) || 90000;
      const t = bytes[tfdt.start] === 1 ? Number(view.getBigUint64(tfdt.start + 4)) : view.getUint32(tfdt.start + 4);
      start = Math.min(start, t / scale);
    }
  }
  return Number.isFinite(start) ? start : 0;
}

/** A segment's length: its EXTINF, or (in progress) the sum of its parts. */
const lengthOf = (s) => (s.url ? s.duration : s.parts.reduce((t, p) => t + p.duration, 0));

export class HlsPlayer {
  /**
   * @param {HTMLVideoElement} video
   * @param {string} url A multivariant playlist (live), or a media playlist (`vod: true`).
   * @param {{vod?: boolean}} [options]
   */
  constructor(video, url, options = {}) {
    this.video = video;
    this.url = new URL(url, location.href).href;
    this.vod = Boolean(options.vod);
    /** 'loading' | 'waiting' (the live is not on air) | 'playing' | 'failed' | 'stopped' */
    this.state = 'loading';
    /** Seconds behind the wall clock of the frame shown (live; null before it plays). */
    this.delay = null;
    /** The rendition played: { url, width, height, codecs, bandwidth }. */
    this.rendition = null;
    /** Received kbit/s over the last few seconds. */
    this.bitrateKbps = 0;
    /** @type {Error|null} The last error (see the `error` event). */
    this.error = null;
    this._handlers = {};
    this._stopped = false;
    this._anchors = []; // { end: media time, pdt: ms at that time }: maps playback to wall clock
    this._received = []; // { at, bytes }: for bitrateKbps
    this._abort = new AbortController();
    this._tick = setInterval(() => this._onTick(), 250);
    // A stall at the edge (parts came late): aim a part further back from now on.
    this._onWaiting = () => {
      // Not the wait for the first frames, nor a seek's.
      if (this.vod || !this._started || performance.now() - this._startedAt < 1000) return;
      if (this._stalls >= MAX_STALL_PARTS || this.video.seeking) return;
      this._stalls++;
      this._holdBack += this._partTarget;
    };
    video.addEventListener('waiting', this._onWaiting);
    queueMicrotask(() => this._run());
  }

  /** `state` (string), `error` (Error), `rendition` (object). */
  on(type, fn) {
    (this._handlers[type] ??= new Set()).add(fn);
    return this;
  }

  _emit(type, value) {
    for (const fn of this._handlers[type] ?? []) fn(value);
  }

  _setState(state) {
    if (this.state === state || (this._stopped && state !== 'stopped')) return;
    this.state = state;
    this._emit('state', state);
  }

  stop() {
    if (this._stopped) return;
    this._stopped = true;
    clearInterval(this._tick);
    this.video.removeEventListener('waiting', this._onWaiting);
    this._abort.abort();
    if (this._objectUrl) {
      this.video.removeAttribute('src');
      this.video.load();
      URL.revokeObjectURL(this._objectUrl);
    }
    this._setState('stopped');
  }

  async _run() {
    for (let failures = 0; !this._stopped; ) {
      try {
        await (this.vod ? this._playVod() : this._playLive());
        return;
      } catch (err) {
        if (this._stopped) return;
        this.error = err;
        this._emit('error', err);
        // 401/403: a private live without a valid token; 409: a VP8 live (no HLS). Retrying
        // changes nothing (409: until a caster sends H.264, so keep trying, slowly).
        if (err.status === 401 || err.status === 403 || (this.vod && err.status)) {
          this._setState('failed');
          return;
        }
        if (err.status === 404 || err.status === 409 || err.status === 503) this._setState('waiting');
        failures++;
        await this._sleep(err.status === 409 ? 5000 : Math.min(RETRY_MS * failures, 5000));
      }
    }
  }

  _sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  async _fetch(url, { range, text = false } = {}) {
    const headers = range ? { Range: `bytes=${range.offset}-${range.offset + range.length - 1}` } : {};
    const res = await fetch(url, { headers, signal: this._abort.signal });
    if (!res.ok) throw new HlsHttpError(res.status, (await res.text().catch(() => '')).trim(), url);
    if (text) return res.text();
    const data = await res.arrayBuffer();
    const now = performance.now();
    this._received.push({ at: now, bytes: data.byteLength });
    while (this._received.length && this._received[0].at < now - 3000) this._received.shift();
    this.bitrateKbps = Math.round(this._received.reduce((t, r) => t + r.bytes, 0) * 8 / 3000);
    return data;
  }

  /** A new MediaSource with one SourceBuffer for `codecs` (video and audio muxed). */
  async _attach(codecs) {
    const type = `video/mp4; codecs="${codecs}"`;
    if (!MediaSource.isTypeSupported(type)) throw new Error(`this browser cannot play ${type}`);
    if (this._objectUrl) URL.revokeObjectURL(this._objectUrl);
    const ms = new MediaSource();
    this._ms = ms;
    this._objectUrl = URL.createObjectURL(ms);
    this.video.src = this._objectUrl;
    await new Promise((resolve) => ms.addEventListener('sourceopen', resolve, { once: true }));
    this._sb = ms.addSourceBuffer(type);
    this._codecs = codecs;
    this._initUrl = null;
    this._anchors = [];
  }

  /** Runs `fn` on the SourceBuffer and waits for it to finish. */
  _sbDo(fn) {
    const sb = this._sb;
    return new Promise((resolve, reject) => {
      const done = () => {
        sb.removeEventListener('updateend', done);
        sb.removeEventListener('error', fail);
        resolve();
      };
      const fail = () => {
        sb.removeEventListener('updateend', done);
        reject(new Error('the browser could not decode the media (SourceBuffer error)'));
      };
      sb.addEventListener('updateend', done);
      sb.addEventListener('error', fail);
      try {
        fn(sb);
      } catch (err) {
        sb.removeEventListener('updateend', done);
        sb.removeEventListener('error', fail);
        reject(err);
      }
    });
  }

  async _append(data) {
    try {
      await this._sbDo((sb) => sb.appendBuffer(data));
    } catch (err) {
      if (err.name !== 'QuotaExceededError') throw err;
      // Full: drop what was played, then try once more.
      const t = this.video.currentTime;
      if (t > 2) await this._sbDo((sb) => sb.remove(0, t - 2));
      await this._sbDo((sb) => sb.appendBuffer(data));
    }
  }

  /** The end of the buffered range holding the playhead (or of the last range). */
  _bufferedEnd() {
    const b = this._sb?.buffered;
    if (!b?.length) return 0;
    return b.end(b.length - 1);
  }

  /**
   * Appends an init segment. `restart`: the media after it starts a new timeline (the first
   * init, another caster's): its first fragment is placed right after what is buffered,
   * whatever its timestamps (timestampOffset from its tfdt).
   */
  async _appendInit(map, restart) {
    const init = await this._fetch(map.url, { range: map.range });
    await this._append(init);
    this._initUrl = map.url;
    this._timescales = timescalesOfInit(new Uint8Array(init));
    if (restart) this._placing = true;
  }

  async _appendMedia(data) {
    // Media well behind the playhead goes first (here, between appends: never while one runs).
    const b = this._sb.buffered;
    const t = this.video.currentTime;
    if (b.length && t - b.start(0) > KEEP_BEHIND_S + 10) await this._sbDo((sb) => sb.remove(0, t - KEEP_BEHIND_S));
    if (this._placing) {
      this._placing = false;
      this._sb.timestampOffset = this._bufferedEnd() - startOfFragment(new Uint8Array(data), this._timescales);
    }
    await this._append(data);
  }

  // ---- live ----

  async _playLive() {
    const text = await this._fetch(this.url, { text: true });
    const variants = parseMultivariant(text, this.url).filter((v) => MediaSource.isTypeSupported(`video/mp4; codecs="${v.codecs}"`));
    if (!variants.length) throw new Error('no rendition of this live can be played here (codecs not supported)');
    // The highest that fits the element (at least 720p-worth of pixels on a small element).
    const fit = Math.max(this.video.clientHeight * (globalThis.devicePixelRatio || 1), 720);
    const rendition = variants.find((v) => v.height <= fit) ?? variants.at(-1);
    this.rendition = rendition;
    this._emit('rendition', rendition);
    if (rendition.codecs !== this._codecs || !this._sb) await this._attach(rendition.codecs);
    let pl = parseMedia(await this._fetch(rendition.url, { text: true }), rendition.url);
    this._holdBack = pl.partHoldBack;
    this._stalls = 0;
    this._partTarget = pl.partTarget || pl.targetDuration;

    // Start at the last independent part at least PART-HOLD-BACK from the end.
    const total = pl.segments.reduce((t, s) => t + lengthOf(s), 0);
    let at = 0;
    let cursor = { msn: pl.segments[0]?.msn ?? pl.mediaSequence, part: 0 };
    for (const s of pl.segments) {
      if (at <= total - this._holdBack) cursor = { msn: s.msn, part: 0 };
      let p = at;
      s.parts.forEach((part, i) => {
        if (part.independent && p <= total - this._holdBack && i > 0) cursor = { msn: s.msn, part: i };
        p += part.duration;
      });
      at += lengthOf(s);
    }
    let restart = true; // the first media goes after what is buffered (nothing, or a previous run's)
    let failures = 0;
    this._started = false;
    while (!this._stopped) {
      const seg = pl.segments.find((s) => s.msn === cursor.msn);
      try {
        if (!seg) {
          if (cursor.msn < pl.mediaSequence) throw Object.assign(new Error('fell out of the playlist window'), { resync: true });
          pl = await this._awaitPart(rendition.url, cursor, pl);
          continue;
        }
        if (restart || seg.map.url !== this._initUrl || (seg.discontinuity && cursor.part === 0)) {
          await this._appendInit(seg.map, restart || seg.discontinuity);
          restart = false;
        }
        if (cursor.part < seg.parts.length) {
          const part = seg.parts[cursor.part];
          const pdt = (seg.pdt ?? NaN) + seg.parts.slice(0, cursor.part + 1).reduce((t, p) => t + p.duration, 0) * 1000;
          const early = this._prefetched?.url === part.url ? this._prefetched.data : null;
          this._prefetched = null;
          await this._appendMedia(early ?? (await this._fetch(part.url)));
          this._anchor(pdt);
          cursor = { msn: seg.msn, part: cursor.part + 1 };
        } else if (seg.url && !seg.parts.length) {
          // Too far behind for parts: the whole segment.
          await this._appendMedia(await this._fetch(seg.url));
          this._anchor((seg.pdt ?? NaN) + seg.duration * 1000);
          cursor = { msn: seg.msn + 1, part: 0 };
        } else if (seg.url) {
          cursor = { msn: seg.msn + 1, part: 0 };
        } else {
          this._startPlayback();
          pl = await this._awaitPart(rendition.url, cursor, pl);
        }
        failures = 0;
      } catch (err) {
        if (this._stopped) return;
        // 400 (asked past the edge) or out of the window: the live restarted; start over.
        if (err.resync || err.status === 400 || err.status === 404 || ++failures >= MAX_FAILURES) throw err;
        this.error = err;
        this._emit('error', err);
        await this._sleep(RETRY_MS);
        pl = parseMedia(await this._fetch(rendition.url, { text: true }), rendition.url);
      }
    }
  }

  /**
   * At the edge: the blocking reload for part `cursor` and, alongside, the playlist's preload
   * hint (that same part; the server holds both until it exists): one round trip less per part.
   */
  async _awaitPart(url, cursor, pl) {
    const hint = pl.preloadHint;
    const early = hint ? this._fetch(hint).then((data) => ({ url: hint, data }), () => null) : null;
    const next = await this._reload(url, cursor);
    this._prefetched = early ? await early : null;
    return next;
  }

  /** Blocking reload: the playlist once it lists part `cursor` (RFC 8216bis 6.2.5.2). */
  async _reload(url, cursor) {
    const u = new URL(url);
    u.searchParams.set('_HLS_msn', String(cursor.msn));
    u.searchParams.set('_HLS_part', String(cursor.part));
    return parseMedia(await this._fetch(u.href, { text: true }), url);
  }

  /** Notes the wall-clock time (PROGRAM-DATE-TIME) of the buffered end just appended. */
  _anchor(pdt) {
    if (!Number.isFinite(pdt)) return;
    this._anchors.push({ end: this._bufferedEnd(), pdt });
    if (this._anchors.length > 400) this._anchors.splice(0, 100);
  }

  /** First play: PART-HOLD-BACK behind the buffered edge. */
  _startPlayback() {
    if (this._started) return;
    const b = this._sb.buffered;
    if (!b.length) return;
    this._started = true;
    this._startedAt = performance.now();
    const end = b.end(b.length - 1);
    this.video.currentTime = Math.max(b.start(b.length - 1), end - this._holdBack);
    this.video.play().catch(() => {
      /* autoplay policy: the page shows its controls */
    });
  }

  _onTick() {
    const v = this.video;
    if (this._stopped || !this._sb || !this._started) return;
    if (this.vod) {
      this._vodTick();
      return;
    }
    const end = this._bufferedEnd();
    const behind = end - v.currentTime - this._holdBack;
    // Stuck in a hole (a part lost, a gap between timelines): jump to the next buffered range.
    const b = this._sb.buffered;
    if (v.readyState < 3) {
      for (let i = 0; i < b.length; i++) {
        if (b.start(i) > v.currentTime && b.start(i) - v.currentTime < 5) {
          v.currentTime = b.start(i) + 0.05;
          break;
        }
      }
    }
    if (behind > CATCH_UP_SEEK_S) v.currentTime = end - this._holdBack;
    else if (behind > this._partTarget + CATCH_UP_SLACK_S) v.playbackRate = CATCH_UP_RATE;
    else if (behind < -this._partTarget) v.playbackRate = SLOW_DOWN_RATE;
    else v.playbackRate = 1;
    // The shown frame's wall-clock time, from the first anchor past the playhead.
    const anchor = this._anchors.find((a) => a.end >= v.currentTime);
    if (anchor && v.readyState >= 2) {
      this.delay = Math.round((Date.now() - (anchor.pdt - (anchor.end - v.currentTime) * 1000))) / 1000;
    }
    if (!v.paused && v.readyState >= 3 && v.currentTime > 0) this._setState('playing');
  }

  // ---- VOD (a recording) ----

  async _playVod() {
    const pl = parseMedia(await this._fetch(this.url, { text: true }), this.url);
    if (!pl.segments.length) throw new Error('the recording lists no media');
    // A VOD playlist names no codecs: read them from the init segment.
    const map = pl.segments[0].map;
    const init = await this._fetch(map.url, { range: map.range });
    await this._attach(codecsOfInit(new Uint8Array(init)));
    let t = 0;
    for (const s of pl.segments) {
      s.start = t;
      t += s.duration;
    }
    this._ms.duration = t;
    this._vod = { pl, next: 0, busy: false };
    await this._append(init);
    this._started = true;
    this._setState('playing');
    this.video.addEventListener('seeking', () => this._vodSeek());
    this._vodTick();
  }

  _vodSeek() {
    const { pl } = this._vod;
    const t = this.video.currentTime;
    const i = pl.segments.findIndex((s) => s.start + s.duration > t);
    if (i >= 0) this._vod.next = i;
  }

  /** Keeps VOD_AHEAD_S fetched ahead of the playhead, one segment at a time. */
  async _vodTick() {
    const vod = this._vod;
    if (!vod || vod.busy || this._stopped) return;
    const { pl } = vod;
    const seg = pl.segments[vod.next];
    if (!seg) {
      if (this._ms.readyState === 'open' && !this._sb.updating) this._ms.endOfStream();
      return;
    }
    if (seg.start > this.video.currentTime + VOD_AHEAD_S) return;
    vod.busy = true;
    try {
      const data = await this._fetch(seg.url, { range: seg.range });
      await this._append(data);
      if (vod.next === pl.segments.indexOf(seg)) vod.next++;
      vod.busy = false;
      this._vodTick(); // the next one now, up to VOD_AHEAD_S
    } catch (err) {
      vod.busy = false;
      this.error = err;
      this._emit('error', err);
    }
  }
}
