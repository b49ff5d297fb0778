import { Harness, liveName, waitInPage, rtcStats } from './helpers.mjs';
const h = await Harness.start();
try {
  const live = liveName('r');
  const a = await h.open(`/cast/${live}`, 'castA');
  await waitInPage(a, `!document.getElementById('golive').disabled`);
  await a.click('#golive');
  await waitInPage(a, `window.vesselPublisher.state === 'live'`);
  await a.evaluate(() => { window.log = []; window.vesselPublisher.on('state', s => window.log.push([Date.now()%100000, s])); window.vesselPublisher.on('error', e => window.log.push([Date.now()%100000, 'error ' + e.message])); });
  const viewer = await h.open(`/play/${live}`, 'viewer');
  const b = await h.open(`/cast/${live}`, 'castB');
  await waitInPage(b, `!document.getElementById('golive').disabled`);
  await b.evaluate(() => { window.log = []; });
  await b.click('#golive');
  await b.evaluate(() => { window.vesselPublisher.on('state', s => window.log.push([Date.now()%100000, s])); window.vesselPublisher.on('error', e => window.log.push([Date.now()%100000, 'error ' + e.message])); });
  for (let i = 0; i < 10; i++) {
    await new Promise(r => setTimeout(r, 2000));
    console.log(i, 'A', await a.evaluate(() => [window.vesselPublisher.state, window.vesselPublisher.pc.connectionState]), 'B', await b.evaluate(() => [window.vesselPublisher.state, window.vesselPublisher.pc.connectionState]), 'viewer', JSON.stringify((await rtcStats(viewer, 'window.vesselPlayer.pc')).video));
  }
  console.log('A log', JSON.stringify(await a.evaluate(() => window.log)));
  console.log('B log', JSON.stringify(await b.evaluate(() => window.log)));
  console.log(h.log.lines.filter(l => l.includes('server')).join('\n'));
} finally { await h.close(); }
