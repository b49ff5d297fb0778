import { Harness, liveName, waitInPage } from './helpers.mjs';
const h = await Harness.start();
try {
  const live = liveName('p');
  const caster = await h.open(`/cast/${live}`);
  await waitInPage(caster, `!document.getElementById('golive').disabled`);
  await caster.click('#golive');
  await waitInPage(caster, `window.vesselPublisher.state === 'live'`);
  const viewer = await h.open(`/play/${live}`);
  for (let i = 0; i < 12; i++) {
    await new Promise(r => setTimeout(r, 2500));
    const c = await caster.evaluate(async () => { const r = await window.vesselPublisher.pc.getStats(); const o = {}; for (const s of r.values()) { if (s.type==='outbound-rtp'&&s.kind==='video') Object.assign(o,{w:s.frameWidth,h:s.frameHeight,fps:s.framesPerSecond,q:s.qualityLimitationReason,tb:s.targetBitrate,enc:s.encoderImplementation, codec: s.codecId}); if (s.type==='candidate-pair'&&s.nominated) o.aob=s.availableOutgoingBitrate; if (s.type==='remote-inbound-rtp'&&s.kind==='video') o.rtt=s.roundTripTime; } return o; });
    const v = await viewer.evaluate(async () => { const r = await window.vesselPlayer.pc.getStats(); const o = {}; for (const s of r.values()) { if (s.type==='inbound-rtp'&&s.kind==='video') Object.assign(o,{w:s.frameWidth,h:s.frameHeight,fps:s.framesPerSecond,fd:s.framesDecoded,nack:s.nackCount,pli:s.pliCount,lost:s.packetsLost, jb: s.jitterBufferDelay/s.jitterBufferEmittedCount}); if (s.type==='candidate-pair'&&s.nominated) o.aib=s.availableIncomingBitrate; } const v=document.getElementById('video'); o.el=[v.videoWidth,v.videoHeight,v.paused]; return o; });
    console.log(i, 'caster', JSON.stringify(c), '\n  viewer', JSON.stringify(v));
  }
} finally { await h.close(); }
