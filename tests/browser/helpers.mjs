// Test harness for Vessel's browser tests: runs the server binary and Debian's Chromium
// (through playwright-core; no browser is ever downloaded), opens pages in separate windows,
// and reads WebRTC stats. Everything talks to 127.0.0.1 only.

import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const VESSEL_BIN = process.env.VESSEL_BIN ?? path.join(REPO, 'target/release/vessel');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
/** The harness's own environment variables, not passed to the server. */
const HARNESS_ENV = ['VESSEL_BIN', 'VESSEL_TEST_LOG', 'VESSEL_BROWSER_TESTS_NO_NETNS'];

export const CHROMIUM_ARGS = [
  '--allow-loopback-in-peer-connection',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--no-sandbox',
  '--headless',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Keep pages that are not in front running at full speed (Playwright adds these too).
  '--disable-background-timer-throttling',
  '--disable-backgrounding-occluded-windows',
  '--disable-renderer-backgrounding',
];

/** Where helpers report what they measured (set by Harness.start). */
let note = () => {};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1. */
export function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A redis-server of the caller's own on a free loopback port, without persistence (for cluster
 * tests): `{ url, proc }` once it accepts connections. Kill `proc` when done.
 */
export async function startRedis() {
  const port = await freeTcpPort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  await waitFor(
    () =>
      new Promise((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      }),
    10000,
    'redis-server to accept connections (apt-get install redis-server)',
    50,
  );
  return { url: `redis://127.0.0.1:${port}/0`, proc };
}

/** A free UDP port on 127.0.0.1. */
export function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

/** Whether `port` can be bound on `host` over UDP and over TCP. */
function portFree(host, port) {
  const udp = new Promise((resolve) => {
    const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
    sock.once('error', () => resolve(false));
    sock.bind(port, host, () => sock.close(() => resolve(true)));
  });
  const tcp = new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
  return Promise.all([udp, tcp]).then(([u, t]) => u && t);
}

/**
 * A media port for a server with `workers` workers: it and the next `workers - 1` ports free over
 * UDP and TCP on `host` (worker k takes port + k).
 */
export async function freeMediaPort(host = '127.0.0.1', workers = 2) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = await freeUdpPort();
    if (base + workers > 65535) continue;
    let all = true;
    for (let k = 0; k < workers && all; k++) all = await portFree(host, base + k);
    if (all) return base;
  }
  throw new Error(`no ${workers} consecutive free media ports on ${host}`);
}

/**
 * Polls `fn` until it returns a truthy value (returned), or throws after `timeoutMs`
 * with the last value / error in the message.
 */
export async function waitFor(fn, timeoutMs = 15000, what = 'condition', intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await fn();
      lastError = undefined;
      if (last) return last;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const detail = lastError ? `last error: ${lastError.message}` : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${detail})`);
    }
    await sleep(intervalMs);
  }
}

/** Keeps the last lines of the server's and the pages' output, for failure reports. */
class Log {
  lines = [];
  add(source, text) {
    const stamp = new Date().toISOString().slice(11, 23);
    for (const line of String(text).split('\n')) {
      if (line.trim()) this.lines.push(`${stamp} [${source}] ${line}`);
    }
    if (this.lines.length > 4000) this.lines.splice(0, this.lines.length - 3000);
  }
  tail(n = 150) {
    return this.lines.slice(-n).join('\n');
  }
}

/** The Vessel server process. */
export class VesselServer {
  constructor(log) {
    this.log = log;
    this.proc = null;
  }

  /**
   * Starts on free ports (or the given ones) and waits until `GET /api/lives` answers.
   * `bind`: the address to listen on (default 127.0.0.1); `publicIps`: `--public-ip` values;
   * `extraArgs`: more flags (e.g. `--turn-public-addr`; `--open` for a server on a non-loopback
   * address or with a non-loopback `--public-ip`, whose lives otherwise need stream keys).
   */
  async start(options = {}) {
    // Ports picked here may be taken before the server binds them (another process of the
    // machine): then try fresh ones.
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.startOnce(options);
      } catch (err) {
        const picked = options.httpPort === undefined && options.mediaPort === undefined;
        if (!picked || attempt >= 3 || !/cannot (bind|listen)/.test(err.message)) throw err;
        this.log.add('harness', `ports taken meanwhile; trying others (${attempt})`);
      }
    }
  }

  async startOnce({ httpPort, mediaPort, bind, publicIps, extraArgs } = {}) {
    this.bind = bind ?? this.bind ?? '127.0.0.1';
    this.publicIps = publicIps ?? this.publicIps ?? [];
    this.extraArgs = extraArgs ?? this.extraArgs ?? [];
    this.httpPort = httpPort ?? (await freeTcpPort());
    // Worker k listens on the media port + k (two workers below).
    this.mediaPort = mediaPort ?? (await freeMediaPort(this.bind === '0.0.0.0' ? '0.0.0.0' : this.bind, 2));
    this.url = `http://127.0.0.1:${this.httpPort}`;
    const args = [
      '--http', `${this.bind}:${this.httpPort}`,
      '--media', `${this.bind}:${this.mediaPort}`,
      // Vessel picks a free STUN/TURN port; clients learn it from /api/ice-servers.
      '--turn', `${this.bind}:0`,
      '--rtmp', `${this.bind}:0`,
      // Two media workers on every machine: sessions alternate between them, so the tests
      // cover media crossing shards (ports mediaPort and mediaPort + 1).
      '--workers', '2',
      // After SIGTERM the server drains for this long while sessions remain (default 5 s);
      // stop() kills it after 3 s.
      '--shutdown-grace', '1',
    ];
    for (const ip of this.publicIps) args.push('--public-ip', ip);
    args.push(...this.extraArgs);
    this.log.add('harness', `starting ${VESSEL_BIN} ${args.join(' ')}`);
    // The server warns about VESSEL_* variables that are not its settings: keep the harness's
    // own (VESSEL_BIN, …) out of its environment.
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !HARNESS_ENV.includes(name)));
    const proc = spawn(VESSEL_BIN, args, {
      env: { ...env, RUST_LOG: process.env.RUST_LOG ?? 'info', NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    let exited = null;
    proc.stdout.on('data', (d) => this.log.add('server', d));
    proc.stderr.on('data', (d) => this.log.add('server', d));
    proc.on('error', (err) => {
      exited = `spawn error: ${err.message}`;
    });
    proc.on('exit', (code, signal) => {
      exited = `exited with ${signal ?? code}`;
      this.log.add('harness', `server ${exited}`);
    });
    await waitFor(
      async () => {
        if (exited) throw new Error(`server ${exited}\n${this.log.tail(40)}`);
        const res = await fetch(`${this.url}/api/lives`);
        return res.ok;
      },
      15000,
      `${VESSEL_BIN} to answer GET /api/lives`,
      100,
    ).catch((err) => {
      if (exited) throw new Error(`server ${exited}\n${this.log.tail(40)}`);
      throw err;
    });
    return this;
  }

  /** Stops the server (SIGTERM, then SIGKILL after 3 s). */
  async stop(signal = 'SIGTERM') {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise((r) => proc.once('exit', r));
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), 3000);
    await gone;
    clearTimeout(timer);
  }

  /** Stops and starts again on the same ports. */
  async restart(signal) {
    await this.stop(signal);
    await this.start({ httpPort: this.httpPort, mediaPort: this.mediaPort });
  }
}

/**
 * A running server + browser. `open(path)` gives a page in its own window (browser context):
 * headless Chromium throttles background tabs, so caster and viewers never share a window.
 */
export class Harness {
  /** `server`: options of VesselServer.start (bind address, public IPs). */
  static async start({ server } = {}) {
    const h = new Harness();
    h.log = new Log();
    h.server = await new VesselServer(h.log).start(server);
    h.browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
    });
    h.contexts = new Set();
    h.browsers = [];
    note = (text) => h.note(text);
    await h.checkEmbeddedWeb();
    return h;
  }

  get url() {
    return this.server.url;
  }

  /**
   * A cluster: a redis-server of its own and one `vessel --cluster` node per entry of
   * `capacities` (its `--node-capacity`); the first is the harness's server (`h.server`, `h.url`),
   * all are in `h.nodes`. Resolves once every node's heartbeat is fresh. `close()` stops them all.
   */
  static async startCluster(capacities, { secret = 'cluster-test-secret' } = {}) {
    const redis = await startRedis();
    const args = (capacity) => ['--cluster', redis.url, '--cluster-secret', secret, '--node-capacity', String(capacity)];
    let h;
    try {
      h = await Harness.start({ server: { extraArgs: args(capacities[0]) } });
      h.redis = redis;
      h.nodes = [h.server];
      for (const capacity of capacities.slice(1)) h.nodes.push(await new VesselServer(h.log).start({ extraArgs: args(capacity) }));
    } catch (err) {
      await h?.close();
      redis.proc.kill('SIGKILL');
      throw err;
    }
    await waitFor(
      async () => (await (await fetch(`${h.url}/api/cluster`)).json()).nodes.filter((n) => n.fresh).length === capacities.length,
      10000,
      `${capacities.length} fresh nodes`,
    );
    return h;
  }

  /**
   * Another Chromium (e.g. through a wrapper that runs it in another network namespace),
   * closed with the harness.
   */
  async launchBrowser(executablePath, extraArgs = []) {
    const browser = await chromium.launch({ executablePath, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs] });
    this.browsers.push(browser);
    return browser;
  }

  /**
   * Opens `pathname` on the server in a new window; `name` tags its console output.
   * `browser`: another browser (default the harness's); `base`: another server URL.
   */
  async open(pathname, name = pathname, { browser = this.browser, base = this.url } = {}) {
    const context = await browser.newContext({ viewport: { width: 960, height: 600 } });
    this.contexts.add(context);
    const page = await context.newPage();
    page.on('console', (m) => this.log.add(name, `console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => this.log.add(name, `pageerror: ${e.message}`));
    page.on('requestfailed', (r) => {
      const failure = r.failure()?.errorText ?? '';
      // A closed EventSource / page shows up as ERR_ABORTED: not worth reporting.
      if (!failure.includes('ERR_ABORTED')) this.log.add(name, `request failed: ${r.method()} ${r.url()} ${failure}`);
    });
    page.on('response', (r) => {
      if (r.status() >= 400) this.log.add(name, `HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
    });
    await page.goto(base + pathname, { waitUntil: "domcontentloaded" });
    return page;
  }

  /** Closes a page's window. */
  async closePage(page) {
    const context = page.context();
    this.contexts.delete(context);
    await context.close().catch(() => {});
  }

  /**
   * The server embeds web/ at build time: warn when the binary serves other files than the
   * working tree's (it needs `cargo build --release` after web/ changed).
   */
  async checkEmbeddedWeb() {
    const routes = { 'index.html': '/', 'cast.html': '/cast/x', 'play.html': '/play/x', 'vessel.js': '/vessel.js' };
    const stale = [];
    for (const file of fs.readdirSync(path.join(REPO, 'web'))) {
      if (file.startsWith('.') || !fs.statSync(path.join(REPO, 'web', file)).isFile()) continue;
      const route = routes[file] ?? `/assets/${file}`;
      const served = await (await fetch(this.url + route)).text().catch(() => '');
      const disk = fs.readFileSync(path.join(REPO, 'web', file), 'utf8');
      if (served !== disk) stale.push(file);
    }
    if (stale.length) {
      const msg = `WARNING: ${VESSEL_BIN} serves other versions of web/${stale.join(', web/')} than the working tree: rebuild it (cargo build --release) to test the current pages`;
      console.error(msg);
      this.log.add('harness', msg);
    }
  }

  /** Adds a line to the log (shown on failure, and saved to $VESSEL_TEST_LOG if set). */
  note(text) {
    this.log.add('test', text);
  }

  async close() {
    for (const c of this.contexts) await c.close().catch(() => {});
    for (const b of this.browsers ?? []) await b.close().catch(() => {});
    await this.browser?.close().catch(() => {});
    await this.server?.stop();
    for (const node of this.nodes ?? []) await node.stop('SIGKILL');
    this.redis?.proc.kill('SIGKILL');
    if (process.env.VESSEL_TEST_LOG) {
      fs.appendFileSync(process.env.VESSEL_TEST_LOG, `${this.log.lines.join('\n')}\n`);
    }
  }

  /**
   * Runs a test body; on failure, appends the server's and the pages' recent output to the error.
   */
  /** The server's RTMP address (HOST:PORT), from its "RTMP on HOST:PORT: ..." log line. */
  rtmpAddress() {
    return waitFor(() => this.log.tail(4000).match(/RTMP on ([0-9.]+:[0-9]+)/)?.[1], 5000, 'the RTMP line in the log');
  }

  async diagnose(fn) {
    try {
      return await fn();
    } catch (err) {
      const report = `\n----- recent server / page output -----\n${this.log.tail()}\n-----`;
      if (err && typeof err === 'object') {
        try {
          err.message += report;
        } catch {
          /* read-only message */
        }
      }
      console.error(report);
      throw err;
    }
  }
}

/**
 * WebRTC stats of the RTCPeerConnection that `pcExpr` (a JS expression evaluated in the page,
 * e.g. `window.vesselPlayer.pc`) names. `id` changes when the page replaced its connection.
 */
export async function rtcStats(page, pcExpr) {
  return page.evaluate(async (expr) => {
    // eslint-disable-next-line no-new-func
    const pc = new Function(`return (${expr})`)();
    if (!pc) return null;
    pc.__testId ??= Math.random().toString(36).slice(2);
    const out = {
      id: pc.__testId,
      connectionState: pc.connectionState,
      video: null,
      audio: null,
      sent: { video: null, audio: null },
    };
    const report = await pc.getStats();
    for (const s of report.values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out.video = {
          framesDecoded: s.framesDecoded ?? 0,
          packetsReceived: s.packetsReceived ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          keyFramesDecoded: s.keyFramesDecoded ?? 0,
          codec: report.get(s.codecId)?.mimeType,
          timestamp: s.timestamp,
          bytesReceived: s.bytesReceived ?? 0,
          packetsLost: s.packetsLost ?? 0,
          nackCount: s.nackCount ?? 0,
          pliCount: s.pliCount ?? 0,
          firCount: s.firCount ?? 0,
          retransmittedPacketsReceived: s.retransmittedPacketsReceived ?? null,
          retransmittedBytesReceived: s.retransmittedBytesReceived ?? null,
          freezeCount: s.freezeCount ?? 0,
          totalFreezesDuration: s.totalFreezesDuration ?? 0,
          framesDropped: s.framesDropped ?? 0,
          totalInterFrameDelay: s.totalInterFrameDelay ?? 0,
        };
      } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out.audio = {
          packetsReceived: s.packetsReceived ?? 0,
          totalSamplesReceived: s.totalSamplesReceived ?? 0,
          totalAudioEnergy: s.totalAudioEnergy ?? 0,
        };
      } else if (s.type === 'outbound-rtp' && (s.kind === 'video' || s.kind === 'audio')) {
        const prev = out.sent[s.kind] ?? { packetsSent: 0, framesEncoded: 0, layers: [] };
        out.sent[s.kind] = {
          packetsSent: prev.packetsSent + (s.packetsSent ?? 0),
          framesEncoded: prev.framesEncoded + (s.framesEncoded ?? 0),
          // One per simulcast encoding (rid), lowest first.
          layers: [
            ...prev.layers,
            {
              rid: s.rid ?? null,
              frameWidth: s.frameWidth ?? 0,
              frameHeight: s.frameHeight ?? 0,
              bytesSent: s.bytesSent ?? 0,
              framesEncoded: s.framesEncoded ?? 0,
              active: s.active ?? true,
              qualityLimitationReason: s.qualityLimitationReason ?? null,
              retransmittedPacketsSent: s.retransmittedPacketsSent ?? 0,
              nackCount: s.nackCount ?? 0,
              codec: report.get(s.codecId)?.mimeType,
              timestamp: s.timestamp,
            },
          ].sort((a, b) => a.frameWidth - b.frameWidth),
        };
      }
    }
    return out;
  }, pcExpr);
}

/**
 * The candidate pair that the RTCPeerConnection `pcExpr` names uses (from getStats):
 * `{ local: { type, protocol, relayProtocol, address }, remote: { type, protocol, address } }`,
 * or null before one is selected.
 */
export async function selectedPair(page, pcExpr) {
  return page.evaluate(async (expr) => {
    // eslint-disable-next-line no-new-func
    const pc = new Function(`return (${expr})`)();
    if (!pc) return null;
    const stats = await pc.getStats();
    let pair;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
    });
    if (!pair) stats.forEach((r) => { if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = r; });
    if (!pair) return null;
    const side = (c) => c && {
      type: c.candidateType,
      protocol: c.protocol,
      relayProtocol: c.relayProtocol ?? null,
      address: `${c.address}:${c.port}`,
    };
    return { state: pair.state, local: side(stats.get(pair.localCandidateId)), remote: side(stats.get(pair.remoteCandidateId)) };
  }, pcExpr);
}

/**
 * Waits until the page's connection decodes `frames` more video frames and receives
 * audio (packets and samples rising) — measured from now. Brings the page to the front first.
 * Returns the last stats.
 */
export async function waitForMedia(page, pcExpr, { frames = 20, audioPackets = 20, timeoutMs = 25000, what = pcExpr } = {}) {
  await page.bringToFront();
  let base = null;
  let last = null;
  try {
    const result = await waitFor(
      async () => {
        const s = await rtcStats(page, pcExpr);
        last = s;
        if (!s) return false;
        const zero = { framesDecoded: 0, packetsReceived: 0, totalSamplesReceived: 0 };
        const video = s.video ?? zero;
        const audio = s.audio ?? zero;
        if (!base || base.id !== s.id) {
          // First sample, or the page replaced its connection: count from here / from zero.
          base = base ? { id: s.id, video: zero, audio: zero } : { id: s.id, video, audio };
        }
        return (
          video.framesDecoded >= base.video.framesDecoded + frames &&
          (audioPackets === 0 ||
            (audio.packetsReceived >= base.audio.packetsReceived + audioPackets &&
              audio.totalSamplesReceived > base.audio.totalSamplesReceived)) &&
          s
        );
      },
      timeoutMs,
      `${what}: ${frames} more video frames decoded${audioPackets ? ` and ${audioPackets} more audio packets received` : ''}`,
      300,
    );
    note(`${what}: media flowing: ${JSON.stringify(result)} (from ${JSON.stringify(base)})`);
    return result;
  } catch (err) {
    err.message += `\n  stats at start: ${JSON.stringify(base)}\n  stats at end:   ${JSON.stringify(last)}`;
    throw err;
  }
}

/**
 * Like `waitForMedia`, for video only: waits until the object that `pcExpr` names (an
 * RTCPeerConnection, or anything with `getStats()`, e.g. an RTCRtpReceiver) decodes `frames`
 * more video frames, measured from now. Brings the page to the front first. Returns the last stats.
 */
export function waitForVideo(page, pcExpr, options = {}) {
  return waitForMedia(page, pcExpr, { ...options, audioPackets: 0 });
}

/** Evaluates `expr` in the page until it is truthy. */
export function waitInPage(page, expr, timeoutMs = 15000, what = expr) {
  return waitFor(() => page.evaluate((e) => new Function(`return (${e})`)(), expr), timeoutMs, what);
}

/** A live name unique to this run. */
export function liveName(prefix) {
  return `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

/** npm `peerjs`'s browser bundle (installed for the tests). */
const PEERJS_BUNDLE = path.join(REPO, 'tests/browser/node_modules/peerjs/dist/peerjs.min.js');

/**
 * A page of `base` (default the harness's server) with npm `peerjs` loaded and a Peer opened
 * as the seed opens it, against that server's PeerServer at /peer with its ICE servers (never
 * the public PeerJS cloud or public STUN). The page has `window.peer` and `window.peerId`.
 */
export async function peerjsPage(h, name, base = h.url) {
  const page = await h.open('/', name, { base });
  await page.addScriptTag({ path: PEERJS_BUNDLE });
  await page.evaluate(async (port) => {
    // What the seed passed as `config`, with Vessel's STUN/TURN instead of Google's STUN.
    const config = await (await fetch('/api/ice-servers')).json();
    window.peer = new window.peerjs.Peer({ host: '127.0.0.1', port: Number(port), path: '/peer', config });
    window.peerId = await new Promise((resolve, reject) => {
      window.peer.on('open', resolve);
      window.peer.on('error', reject);
    });
  }, new URL(base).port);
  return page;
}

/** The seed's receive.tsx on a {@link peerjsPage}: answer calls without a stream, play what comes (`window.call`). */
export async function answerPeerjsCalls(page) {
  await page.evaluate(() => {
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
}

/** The seed's cast.tsx on a {@link peerjsPage}: camera and microphone, then `peer.call(id, stream)`. */
export async function callPeerjs(page, id) {
  await page.evaluate(async (id) => {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    window.outgoing = window.peer.call(id, stream);
  }, id);
}
