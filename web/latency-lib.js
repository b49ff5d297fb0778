// Shared by /assets/latency-cast.html and /assets/latency-play.html (the glass-to-glass
// latency page pair): the clock, the settings, the block pattern that carries the clock
// through the video, the BroadcastChannel between the two pages, and stats helpers.

/**
 * The clock both pages paint and read: a high-resolution wall clock. `timeOrigin` is each
 * page's start in Unix ms and `now()` the monotonic time since then, so two pages of the same
 * browser read the same clock (the play page measures the offset anyway: `clockOffsetMs`).
 */
export const clock = () => performance.timeOrigin + performance.now();

const params = new URLSearchParams(location.search);
const num = (name, dflt) => {
  const v = Number(params.get(name));
  return Number.isFinite(v) && v > 0 ? v : dflt;
};

/** What both pages agree on, from the URL (the same query string is given to both). */
export const settings = Object.freeze({
  /** `direct`: two RTCPeerConnections signalled over a BroadcastChannel; `sfu`: through Vessel. */
  mode: params.get('mode') === 'direct' ? 'direct' : 'sfu',
  /** Names the BroadcastChannel and (in sfu mode) the live. */
  session: /^[A-Za-z0-9_-]{1,40}$/.test(params.get('session') ?? '') ? params.get('session') : 'default',
  /** Frames to measure (play page). */
  samples: Math.round(num('samples', 300)),
  /** Frames shown before measuring starts (encoder and bandwidth estimate ramping up). */
  warmup: Math.round(Number(params.get('warmup') ?? 60)) || 0,
  width: Math.round(num('width', 640)),
  height: Math.round(num('height', 480)),
  fps: num('fps', 30),
  /** Bits per second of the one video encoding, in both modes. */
  maxBitrate: Math.round(num('bitrate', 900_000)),
  codec: params.get('codec') || 'VP8',
  /** When the cast page paints: `sweep` (every 1000/fps + 1 ms, on timers) or `raf`. */
  pace: params.get('pace') === 'raf' ? 'raf' : 'sweep',
  /**
   * In a cluster: `1` (default) lets vessel.js route the play page to another node (an edge, the
   * relay hop measured); `0` keeps both pages on the node that served them.
   */
  route: params.get('route') !== '0',
});

export const liveName = () => `latency-${settings.session}`;

/** The BroadcastChannel between the cast and play pages of one session (same origin). */
export function channel() {
  return new BroadcastChannel(`vessel-latency-${settings.session}`);
}

// ---- the block pattern ----
//
// An 8×6 grid of big blocks (80×80 px at 640×480): 4 guard blocks in the corners (white, black /
// black, white: a frame without them is not the pattern), then 24 bits of the millisecond clock
// (wraps every 4.6 hours; only differences under a few seconds matter), 12 bits of a frame
// counter, and a CRC-8 of those 36 bits. A block reads as 1 when the mean luma of its middle is
// above 160, 0 below 96; anything in between, a wrong guard or a wrong CRC makes the frame
// unreadable (counted, never guessed).

export const COLS = 8;
export const ROWS = 6;
const GUARDS = new Map([
  [0, 1],
  [COLS - 1, 0],
  [(ROWS - 1) * COLS, 0],
  [ROWS * COLS - 1, 1],
]);
const DATA_CELLS = [...Array(ROWS * COLS).keys()].filter((i) => !GUARDS.has(i)); // 44 cells
const T_BITS = 24;
const SEQ_BITS = 12;
const CRC_BITS = 8;
export const T_MOD = 2 ** T_BITS;
export const SEQ_MOD = 2 ** SEQ_BITS;

/** CRC-8 (polynomial 0x07) of `bits` (array of 0/1, first bit first). */
function crc8(bits) {
  let crc = 0;
  for (const b of bits) {
    const top = ((crc >> 7) & 1) ^ b;
    crc = (crc << 1) & 0xff;
    if (top) crc ^= 0x07;
  }
  return crc;
}

const toBits = (v, n) => Array.from({ length: n }, (_, i) => Math.floor(v / 2 ** i) % 2);
const fromBits = (bits) => bits.reduce((v, b, i) => v + b * 2 ** i, 0);

/** Paints clock value `t` (ms) and frame counter `seq` on the 2D context `ctx` (w×h). */
export function paintPattern(ctx, w, h, t, seq) {
  const payload = [...toBits(Math.floor(t) % T_MOD, T_BITS), ...toBits(seq % SEQ_MOD, SEQ_BITS)];
  const bits = [...payload, ...toBits(crc8(payload), CRC_BITS)];
  const cell = new Array(ROWS * COLS);
  for (const [i, v] of GUARDS) cell[i] = v;
  DATA_CELLS.forEach((c, k) => (cell[c] = bits[k]));
  const bw = w / COLS, bh = h / ROWS;
  for (let i = 0; i < cell.length; i++) {
    ctx.fillStyle = cell[i] ? '#fff' : '#000';
    // Integer edges, no anti-aliased seams between blocks.
    const x0 = Math.round((i % COLS) * bw), y0 = Math.round(Math.floor(i / COLS) * bh);
    const x1 = Math.round(((i % COLS) + 1) * bw), y1 = Math.round((Math.floor(i / COLS) + 1) * bh);
    ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
  }
}

/** Size to read the pattern at: 8×8 px a block (the browser averages when scaling down). */
export const PROBE_WIDTH = COLS * 8;
export const PROBE_HEIGHT = ROWS * 8;

/**
 * Reads the pattern from RGBA pixels `px` (w×h, any size). Returns `{ t, seq }` or `{ error }`
 * (`'ambiguous block'`, `'guard'`, `'crc'`).
 */
export function readPattern(px, w, h) {
  const bw = w / COLS, bh = h / ROWS;
  // The middle half of each block (every other pixel in big blocks): far from the edges where
  // the codec smears neighbours together.
  const mx = Math.max(1, Math.floor(bw / 4)), my = Math.max(1, Math.floor(bh / 4));
  const step = bw >= 16 ? 2 : 1;
  const cell = new Array(ROWS * COLS);
  for (let i = 0; i < cell.length; i++) {
    const cx = Math.floor((i % COLS) * bw + bw / 2), cy = Math.floor(Math.floor(i / COLS) * bh + bh / 2);
    let sum = 0, n = 0;
    for (let y = cy - my; y < cy + my; y += step) {
      for (let x = cx - mx; x < cx + mx; x += step) {
        const o = (y * w + x) * 4;
        sum += 0.299 * px[o] + 0.587 * px[o + 1] + 0.114 * px[o + 2];
        n++;
      }
    }
    const luma = sum / n;
    if (luma > 160) cell[i] = 1;
    else if (luma < 96) cell[i] = 0;
    else return { error: 'ambiguous block' };
  }
  for (const [i, v] of GUARDS) if (cell[i] !== v) return { error: 'guard' };
  const bits = DATA_CELLS.map((c) => cell[c]);
  const payload = bits.slice(0, T_BITS + SEQ_BITS);
  if (crc8(payload) !== fromBits(bits.slice(T_BITS + SEQ_BITS))) return { error: 'crc' };
  return { t: fromBits(payload.slice(0, T_BITS)), seq: fromBits(payload.slice(T_BITS)) };
}

// ---- WebRTC helpers ----

/** The RTP header extensions Vessel negotiates for video (its answers to WHIP and WHEP). */
export const VESSEL_VIDEO_EXTENSIONS = [
  'urn:ietf:params:rtp-hdrext:sdes:mid',
  'urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id',
  'urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id',
  'http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time',
  'http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01',
  'urn:3gpp:video-orientation',
];

/**
 * Direct mode: makes the transceiver negotiate what the SFU path does. Codecs: `codec` first,
 * the others after (what vessel.js's `video.codec` option does), without RED / ULPFEC / FlexFEC
 * (Vessel does not offer them). Header extensions: Vessel's set only.
 */
export function matchVessel(transceiver, codec) {
  const codecs = (RTCRtpReceiver.getCapabilities('video')?.codecs ?? []).filter((c) => !/red|ulpfec|flexfec/i.test(c.mimeType));
  const wanted = `video/${codec}`.toLowerCase();
  transceiver.setCodecPreferences?.([
    ...codecs.filter((c) => c.mimeType.toLowerCase() === wanted),
    ...codecs.filter((c) => c.mimeType.toLowerCase() !== wanted),
  ]);
  if (transceiver.setHeaderExtensionsToNegotiate && transceiver.getHeaderExtensionsToNegotiate) {
    transceiver.setHeaderExtensionsToNegotiate(
      transceiver.getHeaderExtensionsToNegotiate().map((e) => ({
        ...e,
        direction: VESSEL_VIDEO_EXTENSIONS.includes(e.uri) ? e.direction : 'stopped',
      })),
    );
  }
}

/**
 * Asks the sender to keep the resolution (drop frames rather than pixels) when its bandwidth
 * estimate is low, as it is at the start of a connection: both paths then carry the same
 * picture size from the first frames (otherwise Chromium starts small and takes many seconds
 * to climb back, at a pace that depends on the path).
 */
export async function keepResolution(sender) {
  try {
    const params = sender.getParameters();
    params.degradationPreference = 'maintain-resolution';
    await sender.setParameters(params);
    return sender.getParameters().degradationPreference ?? null;
  } catch (err) {
    console.warn(`degradationPreference: ${err.message}`);
    return null;
  }
}

/** Resolves once `pc` gathered its candidates (at most `ms`): non-trickle offers/answers. */
export function gathered(pc, ms = 3000) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== 'complete') return;
      pc.removeEventListener('icegatheringstatechange', done);
      resolve();
    };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, ms);
  });
}

/** The video section of an SDP, reduced to what matters here: codecs, extensions, candidates. */
export function sdpSummary(sdp) {
  if (!sdp) return null;
  const video = sdp.split(/\r?\nm=/).find((s) => s.startsWith('video')) ?? '';
  const lines = video.split(/\r?\n/);
  return {
    codecs: lines.filter((l) => l.startsWith('a=rtpmap:')).map((l) => l.slice(9)),
    extensions: lines.filter((l) => l.startsWith('a=extmap:')).map((l) => l.split(' ')[1]),
    candidates: lines.filter((l) => l.startsWith('a=candidate:')).map((l) => l.split(' ').slice(2, 8).join(' ')),
  };
}

/** Percentile `p` (0–1) of a sorted array. */
export const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

/** Rounds to 0.1. */
export const r1 = (v) => (v == null || Number.isNaN(v) ? null : Math.round(v * 10) / 10);

/** What the peer connection `pc` says about its video, in one flat object. */
export async function videoStats(pc) {
  if (!pc) return null;
  const report = await pc.getStats();
  const out = {};
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      Object.assign(out, {
        codec: report.get(s.codecId)?.mimeType ?? null,
        width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond,
        framesDecoded: s.framesDecoded, framesDropped: s.framesDropped,
        packetsReceived: s.packetsReceived, packetsLost: s.packetsLost,
        nackCount: s.nackCount, pliCount: s.pliCount, firCount: s.firCount,
        freezeCount: s.freezeCount, totalFreezesDuration: s.totalFreezesDuration,
        decoder: s.decoderImplementation ?? null,
        // Mean time a frame waited in the jitter buffer, and decoding, per frame (ms).
        jitterBufferMs: r1((s.jitterBufferDelay / s.jitterBufferEmittedCount) * 1000),
        jitterBufferTargetMs: r1((s.jitterBufferTargetDelay / s.jitterBufferEmittedCount) * 1000),
        decodeMs: r1((s.totalDecodeTime / s.framesDecoded) * 1000),
        processingMs: r1((s.totalProcessingDelay / s.framesDecoded) * 1000),
        receivedKbps: null,
        bytesReceived: s.bytesReceived,
      });
    } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
      Object.assign(out, {
        codec: report.get(s.codecId)?.mimeType ?? null,
        width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond,
        framesEncoded: s.framesEncoded, keyFramesEncoded: s.keyFramesEncoded,
        encoder: s.encoderImplementation ?? null,
        encodeMs: r1((s.totalEncodeTime / s.framesEncoded) * 1000),
        // Mean time from a frame's capture to its last packet leaving the pacer (ms).
        packetSendMs: r1((s.totalPacketSendDelay / s.packetsSent) * 1000),
        targetKbps: r1(s.targetBitrate / 1000),
        qualityLimitationReason: s.qualityLimitationReason,
        bytesSent: s.bytesSent, packetsSent: s.packetsSent,
        retransmittedPacketsSent: s.retransmittedPacketsSent, nackCount: s.nackCount, pliCount: s.pliCount,
        rid: s.rid ?? null,
      });
    } else if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
      out.rttMs = s.currentRoundTripTime != null ? r1(s.currentRoundTripTime * 1000) : null;
      out.availableOutgoingKbps = s.availableOutgoingBitrate != null ? r1(s.availableOutgoingBitrate / 1000) : null;
      const local = report.get(s.localCandidateId);
      out.candidate = local ? `${local.candidateType} ${local.protocol} ${local.address}:${local.port}` : null;
    }
  }
  return out;
}
