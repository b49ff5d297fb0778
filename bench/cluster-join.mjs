// Join → first decoded frame in a cluster, by `play()` in a page (tests/browser/simulcast-lib.mjs
// joinScenario): two `vessel --cluster` nodes on a redis-server of their own, the caster (the
// cast page, three simulcast layers) on node A, which takes no routed viewers (capacity 0).
//
//   - origin: `play(live, { route: false })`, straight to A (no route request, no relay);
//   - edge, relay warm: `play(live)`: `/api/route` on A names B, WHEP to B, whose relay from A
//     is already up (joins back to back, within the relay's 5 s linger);
//   - edge, relay cold: the same after B's relay has closed (7 s apart): B opens the relay
//     (a signed WHEP-like session to A) while the viewer connects.
//
//   unshare --net bash -c 'ip link set lo up && node bench/cluster-join.mjs [samples]'
//
// Prints each join and the medians. Needs what scripts/test installs, and a release build.

import { Harness } from '../tests/browser/helpers.mjs';
import { joinScenario, median, startCaster } from '../tests/browser/simulcast-lib.mjs';

const samples = Number(process.argv[2] || 5);
const h = await Harness.startCluster([0, 100], { secret: 'bench' });
const [a, b] = h.nodes;
const rows = [];
try {
  await h.diagnose(async () => {
    const live = `join-${Date.now().toString(36)}`;
    await startCaster(h, live);
    const run = async (path, opts) => {
      const joins = await joinScenario(h, live, { samples, ...opts });
      const node = joins[0]?.node;
      const where = node === a.url ? 'A (origin)' : node === b.url ? 'B (edge)' : node;
      rows.push({ path, where, joins, median: median(joins.map((j) => j.firstFrameMs)) });
      console.log(`${path}: ${joins.map((j) => j.firstFrameMs).join(', ')} ms (median ${rows.at(-1).median} ms) on ${where}`);
    };
    await run('origin', { options: { route: false } });
    await new Promise((r) => setTimeout(r, 7000)); // no relay on B yet
    await run('edge, relay cold', { pauseMs: 7000 });
    await run('edge, relay warm', {});
  });
} finally {
  await h.close();
}
console.log('\n| path | node | join → first frame, median (ms) | samples (ms) |\n| --- | --- | --- | --- |');
for (const r of rows) console.log(`| ${r.path} | ${r.where} | ${r.median} | ${r.joins.map((j) => j.firstFrameMs).join(', ')} |`);
