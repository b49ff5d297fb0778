// A second network namespace for a viewer whose link the tests degrade: joined to the test's own
// namespace by a veth pair (10.77.0.1/30 here, 10.77.0.2/30 there). Shaping (`tc … tbf`) on this
// side's end limits server → viewer; loss (`nft … numgen random`) drops UDP the viewer receives.
//
// Only used inside the namespace that scripts/browser-tests (or the bench) unshares: `available()`
// refuses to touch a namespace that has other interfaces than loopback.
//
// The namespace is held by a `cat` process reading a pipe from this process: when this process
// ends (even killed), the pipe closes, `cat` exits and the namespace (and its veth pair) go away
// once the viewer's browser has exited too.

import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CHROMIUM } from './helpers.mjs';

const run = promisify(execFile);

export const HOST_IP = '10.77.0.1';
export const VIEWER_IP = '10.77.0.2';
const PREFIX = 30;
const HOST_DEV = 'vsl-host';
const VIEWER_DEV = 'vsl-viewer';

/**
 * Whether this process may create the viewer namespace: it runs in an isolated network namespace
 * (only loopback, and the veth of a previous ViewerNetns) as root (or mapped root), with ip, tc
 * and nsenter. Returns `true`, or the reason why not.
 */
export async function available() {
  if (process.env.VESSEL_BROWSER_TESTS_NO_NETNS === '1') return 'VESSEL_BROWSER_TESTS_NO_NETNS=1: not in a namespace of our own';
  const others = Object.keys(os.networkInterfaces()).filter((n) => n !== 'lo' && n !== HOST_DEV);
  if (others.length) return `this network namespace has other interfaces (${others.join(', ')}): run through scripts/browser-tests (unshare --net)`;
  for (const tool of [['ip', ['-V']], ['tc', ['-V']], ['nsenter', ['--version']]]) {
    try {
      await run(tool[0], tool[1]);
    } catch (err) {
      return `${tool[0]} is missing (apt-get install iproute2 util-linux): ${err.message}`;
    }
  }
  return true;
}

/** Whether `nft` works in the viewer namespace (nftables installed, kernel support). */
export async function nftAvailable(ns) {
  try {
    await ns.exec('nft', ['list', 'tables']);
    return true;
  } catch (err) {
    return `nft unusable (apt-get install nftables): ${err.stderr?.trim() || err.message}`;
  }
}

export class ViewerNetns {
  /** Creates the namespace, the veth pair and the addresses. */
  static async create(log = () => {}) {
    const ns = new ViewerNetns();
    ns.log = log;
    // Leftover from an earlier run in this same namespace (should not happen): remove it.
    await run('ip', ['link', 'del', HOST_DEV]).catch(() => {});
    ns.holder = spawn('unshare', ['--net', '--', 'cat'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    ns.holder.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise((resolve) => ns.holder.once('exit', resolve));
    // Wait until the child is in its own namespace (unshare has exec'd cat).
    const mine = fs.readlinkSync('/proc/self/ns/net');
    const deadline = Date.now() + 5000;
    for (;;) {
      let theirs = null;
      try {
        theirs = fs.readlinkSync(`/proc/${ns.holder.pid}/ns/net`);
      } catch {
        /* not yet */
      }
      const comm = (() => {
        try {
          return fs.readFileSync(`/proc/${ns.holder.pid}/comm`, 'utf8').trim();
        } catch {
          return '';
        }
      })();
      if (theirs && theirs !== mine && comm === 'cat') break;
      if (ns.holder.exitCode !== null || Date.now() > deadline) {
        throw new Error(`could not create a network namespace (unshare --net): ${stderr || 'timed out'}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    ns.pid = ns.holder.pid;
    ns.exited = exited;
    try {
      await run('ip', ['link', 'add', HOST_DEV, 'type', 'veth', 'peer', 'name', VIEWER_DEV, 'netns', String(ns.pid)]);
      await run('ip', ['addr', 'add', `${HOST_IP}/${PREFIX}`, 'dev', HOST_DEV]);
      await run('ip', ['link', 'set', HOST_DEV, 'up']);
      await ns.exec('ip', ['link', 'set', 'lo', 'up']);
      await ns.exec('ip', ['addr', 'add', `${VIEWER_IP}/${PREFIX}`, 'dev', VIEWER_DEV]);
      await ns.exec('ip', ['link', 'set', VIEWER_DEV, 'up']);
    } catch (err) {
      await ns.close();
      throw new Error(`could not set up the veth pair: ${err.stderr?.trim() || err.message}`);
    }
    // A wrapper that runs Chromium in the namespace (Playwright's executablePath).
    ns.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vessel-netns-'));
    ns.chromium = path.join(ns.dir, 'chromium-in-netns');
    fs.writeFileSync(ns.chromium, `#!/bin/sh\nexec nsenter --net=/proc/${ns.pid}/ns/net -- ${CHROMIUM} "$@"\n`, { mode: 0o755 });
    log(`viewer netns: pid ${ns.pid}, ${HOST_DEV} ${HOST_IP} <-> ${VIEWER_DEV} ${VIEWER_IP}`);
    return ns;
  }

  /** Runs a command in the viewer's namespace. */
  exec(cmd, args) {
    return run('nsenter', [`--net=/proc/${this.pid}/ns/net`, '--', cmd, ...args]);
  }

  /** Limits server → viewer to `rate` (tc tbf on this side's veth). */
  async throttle(rate = '350kbit') {
    await run('tc', ['qdisc', 'replace', 'dev', HOST_DEV, 'root', 'tbf', 'rate', rate, 'burst', '16kbit', 'latency', '100ms']);
    this.log(`throttled ${HOST_DEV} to ${rate}`);
  }

  /** Lifts the limit (no error if there is none). */
  async unthrottle() {
    await run('tc', ['qdisc', 'del', 'dev', HOST_DEV, 'root']).catch(() => {});
    this.log(`unthrottled ${HOST_DEV}`);
  }

  /** Drops `percent` % of the UDP packets the viewer receives (nft in its namespace). */
  async addLoss(percent = 5) {
    await this.removeLoss();
    await this.exec('nft', ['add', 'table', 'inet', 'vessel_loss']);
    await this.exec('nft', ['add', 'chain', 'inet', 'vessel_loss', 'in', '{ type filter hook input priority 0; }']);
    await this.exec('nft', ['add', 'rule', 'inet', 'vessel_loss', 'in', 'meta', 'l4proto', 'udp', 'numgen', 'random', 'mod', '100', '<', String(percent), 'counter', 'drop']);
    this.log(`dropping ${percent} % of the UDP the viewer receives`);
  }

  /** Packets dropped by the loss rule so far (null if none). */
  async lossDropped() {
    try {
      const { stdout } = await this.exec('nft', ['list', 'table', 'inet', 'vessel_loss']);
      const m = stdout.match(/counter packets (\d+)/);
      return m ? Number(m[1]) : null;
    } catch {
      return null;
    }
  }

  async removeLoss() {
    await this.exec('nft', ['delete', 'table', 'inet', 'vessel_loss']).catch(() => {});
  }

  /**
   * Puts the viewer behind a NAT that picks a random source port for every new flow
   * (nft `masquerade fully-random` on its way out), the kind that defeats port prediction.
   */
  async natFullyRandom() {
    await this.removeNat();
    await this.exec('nft', ['add', 'table', 'ip', 'vessel_nat']);
    await this.exec('nft', ['add', 'chain', 'ip', 'vessel_nat', 'post', '{ type nat hook postrouting priority 100; }']);
    await this.exec('nft', ['add', 'rule', 'ip', 'vessel_nat', 'post', 'oifname', VIEWER_DEV, 'counter', 'masquerade', 'fully-random']);
    this.log('viewer behind masquerade fully-random');
  }

  /** Packets the NAT rule has rewritten so far (null if none). */
  async natted() {
    try {
      const { stdout } = await this.exec('nft', ['list', 'table', 'ip', 'vessel_nat']);
      const m = stdout.match(/counter packets (\d+)/);
      return m ? Number(m[1]) : null;
    } catch {
      return null;
    }
  }

  async removeNat() {
    await this.exec('nft', ['delete', 'table', 'ip', 'vessel_nat']).catch(() => {});
  }

  /** Drops every UDP packet the viewer receives: only TCP gets through. */
  async blockUdp() {
    await this.unblockUdp();
    await this.exec('nft', ['add', 'table', 'inet', 'vessel_noudp']);
    await this.exec('nft', ['add', 'chain', 'inet', 'vessel_noudp', 'in', '{ type filter hook input priority 0; }']);
    await this.exec('nft', ['add', 'rule', 'inet', 'vessel_noudp', 'in', 'meta', 'l4proto', 'udp', 'counter', 'drop']);
    this.log('dropping all UDP the viewer receives');
  }

  async unblockUdp() {
    await this.exec('nft', ['delete', 'table', 'inet', 'vessel_noudp']).catch(() => {});
  }

  /** Removes shaping and loss, the veth pair, and ends the namespace's holder. */
  async close() {
    await this.unthrottle().catch(() => {});
    if (this.pid) await this.removeLoss().catch(() => {});
    if (this.pid) await this.unblockUdp().catch(() => {});
    if (this.pid) await this.removeNat().catch(() => {});
    await run('ip', ['link', 'del', HOST_DEV]).catch(() => {});
    if (this.holder && this.holder.exitCode === null) {
      this.holder.stdin.end();
      const timer = setTimeout(() => this.holder.kill('SIGKILL'), 2000);
      await this.exited;
      clearTimeout(timer);
    }
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
