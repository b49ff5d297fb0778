//! Codec facts the forwarder needs: keyframe detection and which of a
//! viewer's payload types can carry a caster's stream unchanged.

use str0m::change::SdpOffer;
use str0m::format::{Codec, CodecConfig, CodecSpec};
use str0m::format::{
    detect_av1_keyframe, detect_h264_keyframe, detect_h264_nalu, detect_h265_keyframe,
    detect_vp8_keyframe, detect_vp9_keyframe,
};

const H264_SPS: u8 = 7;

/// Whether an RTP payload of `codec` starts a keyframe: the packet a viewer
/// can start decoding a stream from.
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => detect_vp8_keyframe(payload),
        Codec::Vp9 => detect_vp9_keyframe(payload),
        // Encoders (Chromium's among them) send SPS and PPS in a packet of
        // their own before the IDR; a viewer spliced in at the IDR would
        // miss the parameter sets of the new resolution.
        Codec::H264 => detect_h264_nalu(payload, H264_SPS) || detect_h264_keyframe(payload),
        Codec::H265 => detect_h265_keyframe(payload),
        Codec::Av1 => detect_av1_keyframe(payload),
        _ => false,
    }
}

/// Whether packets of `from` can be sent as-is on a payload type negotiated
/// as `to`: same codec and clock, and for H264 the same packetization mode
/// and profile_idc (constraint flags and level may differ: encoders that
/// WebRTC meets stay within constrained baseline, and decoders handle any
/// level).
pub fn can_carry(from: &CodecSpec, to: &CodecSpec) -> bool {
    if from.codec != to.codec || from.clock_rate != to.clock_rate {
        return false;
    }
    let (a, b) = (&from.format, &to.format);
    match from.codec {
        Codec::H264 => {
            a.packetization_mode.unwrap_or(0) == b.packetization_mode.unwrap_or(0)
                && profile(a.profile_level_id) == profile(b.profile_level_id)
        }
        Codec::Vp9 => a.profile_id.unwrap_or(0) == b.profile_id.unwrap_or(0),
        Codec::Av1 => a.profile.unwrap_or(0) == b.profile.unwrap_or(0),
        _ => true,
    }
}

/// Whether a viewer that negotiated `to` can play packets of `from`, when
/// no payload type [`can_carry`] them: for H.264 any profile with the same
/// packetization mode. Chromium offers to receive only baseline, main and
/// constrained-high profile ids (no High: 64xxxx) yet decodes a High stream
/// sent under them (210/210 frames measured); OBS and most RTMP encoders
/// send High. MediaMTX answers 42e01f the same way.
pub fn can_play(from: &CodecSpec, to: &CodecSpec) -> bool {
    if can_carry(from, to) {
        return true;
    }
    from.codec == Codec::H264
        && to.codec == Codec::H264
        && from.clock_rate == to.clock_rate
        && from.format.packetization_mode.unwrap_or(0) == to.format.packetization_mode.unwrap_or(0)
}

/// Orders `config` by the offer's preference, so the answer's first codec is
/// the one the caster asked for (str0m answers in its own config's order).
pub fn prefer_offered(config: &mut CodecConfig, offer: &SdpOffer) {
    let offered: Vec<CodecSpec> = offer
        .media_lines
        .iter()
        .flat_map(|m| {
            let params = m.rtp_params();
            m.pts
                .iter()
                .filter_map(|pt| params.iter().find(|p| p.pt() == *pt).map(|p| p.spec()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut params = config.params().to_vec();
    // Stable: codecs the offer does not name keep their relative order.
    params.sort_by_key(|p| {
        offered
            .iter()
            .position(|o| can_carry(o, &p.spec()))
            .unwrap_or(usize::MAX)
    });
    *config = CodecConfig::new_from_payload_params(params);
}

/// profile_idc of an H264 profile-level-id.
fn profile(profile_level_id: Option<u32>) -> u32 {
    profile_level_id.unwrap_or(0x42001f) >> 16
}

#[cfg(test)]
mod tests {
    use str0m::format::FormatParams;
    use str0m::media::Frequency;

    use super::*;

    fn h264(mode: u8, plid: u32) -> CodecSpec {
        CodecSpec {
            codec: Codec::H264,
            clock_rate: Frequency::NINETY_KHZ,
            channels: None,
            format: FormatParams {
                packetization_mode: Some(mode),
                profile_level_id: Some(plid),
                ..Default::default()
            },
        }
    }

    #[test]
    fn h264_needs_same_mode_and_profile() {
        assert!(can_carry(&h264(1, 0x42e01f), &h264(1, 0x42e01f)));
        assert!(
            can_carry(&h264(1, 0x42e01f), &h264(1, 0x42e034)),
            "level may differ"
        );
        assert!(!can_carry(&h264(1, 0x42e01f), &h264(0, 0x42e01f)));
        assert!(!can_carry(&h264(1, 0x42e01f), &h264(1, 0x64001f)));
    }

    #[test]
    fn a_high_profile_stream_plays_on_any_h264_of_its_mode() {
        assert!(can_play(&h264(1, 0x64001f), &h264(1, 0x42e01f)));
        assert!(!can_play(&h264(1, 0x64001f), &h264(0, 0x42e01f)));
        let vp8 = CodecSpec {
            codec: Codec::Vp8,
            ..h264(1, 0x42e01f)
        };
        assert!(!can_play(&h264(1, 0x64001f), &vp8));
    }

    #[test]
    fn the_casters_preferred_codec_comes_first() {
        use std::time::Instant;
        use str0m::RtcConfig;
        use str0m::media::{Direction, MediaKind};

        let mut caster = RtcConfig::new()
            .clear_codecs()
            .enable_h264(true)
            .enable_vp8(true)
            .build(Instant::now());
        let mut api = caster.sdp_api();
        api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, _) = api.apply().unwrap();

        let mut config = RtcConfig::new();
        let first_video = |c: &mut RtcConfig| {
            c.codec_config()
                .params()
                .iter()
                .map(|p| p.spec().codec)
                .find(|c| *c != Codec::Opus)
        };
        assert_eq!(
            first_video(&mut config),
            Some(Codec::Vp8),
            "str0m's default"
        );
        prefer_offered(config.codec_config(), &offer);
        assert_eq!(first_video(&mut config), Some(Codec::H264));
    }

    #[test]
    fn keyframes_are_recognised() {
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x00, 0x9d]));
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x01, 0x9d]));
        // H264 IDR slice (NAL type 5) and a non-IDR slice (type 1).
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88]));
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x9a]));
        // A STAP-A of SPS + PPS, as Chromium sends before the IDR.
        let stap_a = [0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce];
        assert!(starts_keyframe(Codec::H264, &stap_a));
        // An FU-A middle fragment of an IDR is no start.
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05, 0x88]));
        assert!(!starts_keyframe(Codec::Opus, &[0x10, 0x00]));
    }
}
