//! What a `produce` must satisfy before str0m sees it: str0m's direct API
//! trusts its caller, and a setup it does not expect either panics or
//! silently wires one producer's packets to another.

use str0m::Rtc;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Pt};
use str0m::rtp::{Extension, ExtensionMap};

use super::{DirectError, Produce, refused};
use crate::sfu::codec::can_carry;
use crate::sfu::peer::Cast;

/// Longest mid and rid str0m keeps (its ids are fixed-size).
const MAX_MID: usize = 16;
const MAX_RID: usize = 8;

/// Simulcast layers or streams one producer may declare.
const MAX_ENCODINGS: usize = 4;

/// Whether two codecs' payload types overlap.
pub(super) fn clash(a: &PayloadParams, b: &PayloadParams) -> bool {
    let pts = |p: &PayloadParams| -> Vec<Pt> {
        [Some(p.pt()), p.resend(), p.red()]
            .into_iter()
            .flatten()
            .collect()
    };
    let (a, b) = (pts(a), pts(b));
    a.iter().any(|x| b.contains(x))
}

/// str0m turns anything but letters and digits into `_`, so `r-0` and
/// `r_0` would be one rid: allow letters and digits only.
fn id_ok(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks a `produce` on its own.
pub(super) fn check_produce(p: &Produce) -> Result<(), DirectError> {
    if !id_ok(&p.mid, MAX_MID) {
        return Err(refused(format!(
            "mid must be 1 to {MAX_MID} letters or digits"
        )));
    }
    if let Some(r) = p.rids.iter().find(|r| !id_ok(r, MAX_RID)) {
        return Err(refused(format!(
            "rid '{r}' must be 1 to {MAX_RID} letters or digits"
        )));
    }
    let Some(first) = p.codecs.first() else {
        return Err(refused(
            "rtpParameters.codecs names no codec Vessel forwards",
        ));
    };
    if first.spec().codec.kind() != p.kind {
        return Err(refused("the first codec is not of the producer's kind"));
    }
    for (i, a) in p.codecs.iter().enumerate() {
        if p.codecs[i + 1..].iter().any(|b| clash(a, b)) {
            return Err(refused(format!("payload type {} is used twice", *a.pt())));
        }
    }
    check_encodings(p)?;
    let mut ids: Vec<u8> = p.exts.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) || ids.iter().any(|id| !(1..=14).contains(id)) {
        return Err(refused(
            "header extension ids must be distinct, from 1 to 14",
        ));
    }
    Ok(())
}

/// Simulcast layers by rid (video only), or streams by SSRC: a few, each
/// named once.
fn check_encodings(p: &Produce) -> Result<(), DirectError> {
    if p.rids.is_empty() && p.ssrcs.is_empty() {
        return Err(refused("rtpParameters.encodings names no ssrc or rid"));
    }
    if p.rids.len() > MAX_ENCODINGS || p.ssrcs.len() > MAX_ENCODINGS {
        return Err(refused(format!("at most {MAX_ENCODINGS} encodings")));
    }
    if !p.rids.is_empty() && p.kind != MediaKind::Video {
        return Err(refused("only video has simulcast layers (rids)"));
    }
    let mut rids = p.rids.clone();
    rids.sort_unstable();
    rids.dedup();
    if rids.len() != p.rids.len() {
        return Err(refused("each encoding needs a rid of its own"));
    }
    let mut ssrcs: Vec<u32> = p
        .ssrcs
        .iter()
        .flat_map(|(s, rtx)| std::iter::once(*s).chain(*rtx))
        .collect();
    let count = ssrcs.len();
    ssrcs.sort_unstable();
    ssrcs.dedup();
    if ssrcs.len() != count || ssrcs.contains(&0) {
        return Err(refused(
            "each stream and its rtx need an ssrc of their own, not 0",
        ));
    }
    Ok(())
}

/// What a producer must not share with those already on the transport.
pub(super) fn check_free(rtc: &mut Rtc, cast: &Cast, p: &Produce) -> Result<(), DirectError> {
    if cast.producers.iter().any(|q| q.kind == p.kind) {
        return Err(refused(format!(
            "this transport already produces {}: a caster has one audio and one video producer",
            p.kind
        )));
    }
    if rtc.media(p.mid.as_str().into()).is_some() {
        return Err(refused(format!("mid '{}' is already in use", p.mid)));
    }
    let mut api = rtc.direct_api();
    for (ssrc, rtx) in &p.ssrcs {
        if let Some(taken) = std::iter::once(*ssrc)
            .chain(*rtx)
            .find(|s| api.stream_rx(&(*s).into()).is_some())
        {
            return Err(refused(format!(
                "ssrc {taken} is already in use on this transport"
            )));
        }
    }
    Ok(())
}

/// A later producer must fit the session the first one built: the same
/// ids for what str0m reads to find streams, and known payload types.
pub(super) fn check_fits(rtc: &Rtc, exts: &ExtensionMap, p: &Produce) -> Result<(), DirectError> {
    for (id, e) in &p.exts {
        let routing = matches!(
            e,
            Extension::RtpMid
                | Extension::RtpStreamId
                | Extension::RepairedRtpStreamId
                | Extension::TransportSequenceNumber
        );
        if routing && exts.id_of(e.clone()) != Some(*id) {
            // A browser keeps one id per extension on a connection, so
            // only a hand-made client gets here.
            let theirs = exts
                .id_of(e.clone())
                .map_or("none".into(), |i| i.to_string());
            return Err(refused(format!(
                "header extension {} has id {id} here but {theirs} on this transport's first \
                 producer; a transport's producers must share their extension ids",
                e.as_uri(),
            )));
        }
    }
    for c in &p.codecs {
        let known = rtc.codec_config().params().iter().any(|k| {
            k.pt() == c.pt() && k.resend() == c.resend() && can_carry(&c.spec(), &k.spec())
        });
        if !known {
            return Err(refused(format!(
                "payload type {} does not match this transport's first producer",
                *c.pt()
            )));
        }
    }
    Ok(())
}
