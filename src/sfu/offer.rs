//! What a WHIP/WHEP offer must hold before Vessel sets up a session for
//! it: enough to ever connect (ICE credentials, a certificate fingerprint
//! of the right size, one usable m-line) and no more m-lines than a caster
//! or viewer uses. str0m parses the SDP; this only reads what it parsed,
//! so an offer that can never connect gets a 400 with the reason instead of
//! a 201 and a session that holds a key pair until it times out.

use std::collections::HashMap;

use str0m::change::SdpOffer;
use str0m::format::CodecSpec;
use str0m::media::Pt;

use super::JoinError;

/// A caster sends audio and video (with simulcast, still two m-lines); a
/// viewer receives them. Browsers add a data channel at most.
pub const MAX_MEDIA_LINES: usize = 16;

pub fn check(offer: &SdpOffer) -> Result<(), JoinError> {
    let lines = &offer.media_lines;
    if lines.len() > MAX_MEDIA_LINES {
        return Err(JoinError::Unusable(format!(
            "the offer has {} m-lines; Vessel takes at most {MAX_MEDIA_LINES} (one audio and one \
             video are all a caster or viewer needs)",
            lines.len()
        )));
    }
    if !lines.iter().any(|m| !m.disabled) {
        return Err(JoinError::Unusable(
            "every m-line of the offer is disabled (port 0): there is nothing to connect".into(),
        ));
    }
    let creds = offer
        .session
        .ice_creds()
        .or_else(|| lines.iter().find_map(|m| m.ice_creds()));
    match creds {
        None => {
            return Err(JoinError::Unusable(
                "the offer has no a=ice-ufrag and a=ice-pwd: its ICE could never connect".into(),
            ));
        }
        // RFC 8839 §5.4: a ufrag of at least 4 characters, a password of
        // at least 22 (128 bits).
        Some(c) if c.ufrag.len() < 4 || c.pass.len() < 22 => {
            return Err(JoinError::Unusable(
                "the offer's a=ice-ufrag must have at least 4 characters and its a=ice-pwd at \
                 least 22 (RFC 8839)"
                    .into(),
            ));
        }
        Some(_) => {}
    }
    let fingerprint = offer
        .session
        .fingerprint()
        .or_else(|| lines.iter().find_map(|m| m.fingerprint()));
    let Some(fingerprint) = fingerprint else {
        return Err(JoinError::Unusable(
            "the offer has no a=fingerprint: DTLS could never be verified".into(),
        ));
    };
    let expected = match fingerprint.hash_func.to_ascii_lowercase().as_str() {
        "sha-1" => 20,
        "sha-224" => 28,
        "sha-256" => 32,
        "sha-384" => 48,
        "sha-512" => 64,
        other => {
            return Err(JoinError::Unusable(format!(
                "the offer's a=fingerprint uses '{other}': use sha-256"
            )));
        }
    };
    if fingerprint.bytes.len() != expected {
        return Err(JoinError::Unusable(format!(
            "the offer's a=fingerprint has {} bytes where {} needs {expected}",
            fingerprint.bytes.len(),
            fingerprint.hash_func
        )));
    }
    payload_types(offer)
}

/// What a payload type carries.
#[derive(Debug, PartialEq)]
enum Carries {
    Media(CodecSpec),
    /// Retransmissions of (the codec of) another payload type.
    Resend(CodecSpec),
}

/// All m-lines share one transport (BUNDLE), so a payload type must mean
/// the same in each (RFC 9143). str0m 0.25 panics ("Pt locked multiple
/// times") on a viewer's offer that maps one payload type to two H.264
/// configurations in two m-lines; refused here, it gets a reason instead.
fn payload_types(offer: &SdpOffer) -> Result<(), JoinError> {
    let mut seen: HashMap<Pt, Carries> = HashMap::new();
    for m in &offer.media_lines {
        for p in m.rtp_params() {
            let carried = [
                Some((p.pt(), Carries::Media(p.spec()))),
                p.resend().map(|rtx| (rtx, Carries::Resend(p.spec()))),
            ];
            for (pt, what) in carried.into_iter().flatten() {
                match seen.get(&pt) {
                    Some(before) if *before != what => {
                        return Err(JoinError::Unusable(format!(
                            "the offer gives payload type {pt} two meanings ({before:?} and \
                             {what:?}): bundled m-lines must give a payload type the same codec \
                             and parameters"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(pt, what);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const GOOD: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
        a=rtpmap:111 opus/48000/2\r\n";

    fn check_sdp(sdp: &str) -> Result<(), String> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| format!("parse: {e}"))?;
        check(&offer).map_err(|e| e.to_string())
    }

    #[test]
    fn a_usable_offer_passes() {
        check_sdp(GOOD).unwrap();
    }

    #[test]
    fn offers_that_could_never_connect_are_refused_with_the_reason() {
        let no_pwd = GOOD.replace("a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", "");
        assert!(check_sdp(&no_pwd).unwrap_err().contains("ice-pwd"));
        let short_pwd = GOOD.replace("abcdefghijklmnopqrstuvwx", "short");
        assert!(check_sdp(&short_pwd).unwrap_err().contains("22"));
        let short_fp = GOOD.replace("00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00", "00");
        let e = check_sdp(&short_fp).unwrap_err();
        assert!(e.contains("bytes") || e.starts_with("parse"), "{e}");
        let port0 = GOOD.replace("m=audio 9 ", "m=audio 0 ");
        assert!(check_sdp(&port0).unwrap_err().contains("port 0"));
        let mut many = GOOD.to_string();
        for i in 1..=MAX_MEDIA_LINES {
            many.push_str(&format!(
                "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
            ));
        }
        assert!(check_sdp(&many).unwrap_err().contains("m-lines"));
    }

    #[test]
    fn a_payload_type_means_one_thing_in_every_m_line() {
        let video = |pts: &str, rtpmaps: &str| {
            format!("{GOOD}m=video 9 UDP/TLS/RTP/SAVPF {pts}\r\na=mid:1\r\na=recvonly\r\n{rtpmaps}")
        };
        let vp8 = "a=rtpmap:96 VP8/90000\r\n";
        let rtx = "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n";
        check_sdp(&video("96 97", &format!("{vp8}{rtx}"))).unwrap();
        let opus_again = "a=rtpmap:111 opus/48000/2\r\n";
        check_sdp(&video("96", &format!("{vp8}{opus_again}"))).unwrap();
        let vp8_on_111 = "a=rtpmap:111 VP8/90000\r\n";
        let e = check_sdp(&video("96 111", &format!("{vp8}{vp8_on_111}"))).unwrap_err();
        assert!(e.contains("payload type 111"), "{e}");
        let rtx_on_111 = "a=rtpmap:111 rtx/90000\r\na=fmtp:111 apt=96\r\n";
        let e = check_sdp(&video("96 111", &format!("{vp8}{rtx_on_111}"))).unwrap_err();
        assert!(e.contains("payload type 111"), "{e}");
    }
}
