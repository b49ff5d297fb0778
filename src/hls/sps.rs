//! The few H.264 sequence parameter set fields HLS needs: picture size (for
//! `RESOLUTION=` and the `avc1` box), and chroma format and bit depths (the
//! `avcC` extension that High profiles require).
//!
//! Our own exp-Golomb reader rather than a crate (`h264-reader` is the
//! maintained one): we need six fields from the first ~20 syntax elements,
//! which is ~100 lines, against five more crates on a path that reads bytes a
//! caster sends us. Everything here is bounded: a malformed SPS is `None`,
//! never a panic or a huge allocation.

/// What [`parse_sps`] reads from an SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    /// The byte between profile and level (constraint_set flags).
    pub constraint_flags: u8,
    pub level_idc: u8,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    /// Displayed size: coded macroblocks less the cropping window.
    pub width: u32,
    pub height: u32,
}

/// Largest picture side we accept: H.264 level 6.2 tops out at 8192x4320;
/// anything past 16384 is a corrupt SPS, not a stream.
const MAX_SIDE: u64 = 16384;

/// Profiles whose SPS carries chroma format, bit depths and scaling lists
/// (H.264 7.3.2.1.1, the `if( profile_idc == 100 || ...)` branch).
fn has_chroma_info(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// Parses an SPS NAL unit (starting with its one-byte NAL header, type 7).
pub fn parse_sps(nal: &[u8]) -> Option<SpsInfo> {
    if nal.len() < 4 || nal[0] & 0x1f != 7 {
        return None;
    }
    let rbsp = unescape(&nal[1..]);
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.bits(8)? as u8;
    let constraint_flags = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    let _sps_id = r.ue()?;

    let (mut chroma_format_idc, mut separate_colour_plane) = (1, false);
    let (mut bit_depth_luma, mut bit_depth_chroma) = (8, 8);
    if has_chroma_info(profile_idc) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return None;
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()?;
        }
        bit_depth_luma = 8 + r.ue()?;
        bit_depth_chroma = 8 + r.ue()?;
        if bit_depth_luma > 14 || bit_depth_chroma > 14 {
            return None;
        }
        let _qpprime_y_zero_transform_bypass = r.bit()?;
        if r.bit()? {
            // seq_scaling_matrix_present_flag: skip the lists, we only need
            // to get past them.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }

    let _log2_max_frame_num = r.ue()?;
    match r.ue()? {
        0 => {
            let _log2_max_poc_lsb = r.ue()?;
        }
        1 => {
            let _delta_pic_order_always_zero = r.bit()?;
            let _offset_for_non_ref_pic = r.se()?;
            let _offset_for_top_to_bottom_field = r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    let _max_num_ref_frames = r.ue()?;
    let _gaps_in_frame_num_allowed = r.bit()?;
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.bit()?;
    if !frame_mbs_only {
        let _mb_adaptive_frame_field = r.bit()?;
    }
    let _direct_8x8_inference = r.bit()?;
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0, 0, 0, 0);
    if r.bit()? {
        crop_l = u64::from(r.ue()?);
        crop_r = u64::from(r.ue()?);
        crop_t = u64::from(r.ue()?);
        crop_b = u64::from(r.ue()?);
    }

    // H.264 7.4.2.1.1: crop offsets are in chroma sample units.
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (crop_unit_x, crop_unit_y) = match chroma_array_type {
        0 => (1, field_factor),
        1 => (2, 2 * field_factor),
        2 => (2, field_factor),
        _ => (1, field_factor),
    };
    let coded_w = width_mbs * 16;
    let coded_h = height_map_units * 16 * field_factor;
    let width = coded_w.checked_sub(crop_unit_x * (crop_l + crop_r))?;
    let height = coded_h.checked_sub(crop_unit_y * (crop_t + crop_b))?;
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return None;
    }
    Some(SpsInfo {
        profile_idc,
        constraint_flags,
        level_idc,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma: bit_depth_luma as u8,
        bit_depth_chroma: bit_depth_chroma as u8,
        width: width as u32,
        height: height as u32,
    })
}

/// H.264 7.3.2.1.1.1 scaling_list(), read and thrown away.
fn skip_scaling_list(r: &mut BitReader, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let delta = i64::from(r.se()?);
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Removes emulation prevention bytes (00 00 03 -> 00 00), giving the RBSP.
fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// MSB-first bit reader over an RBSP.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<bool> {
        let byte = *self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(bit == 1)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | u32::from(self.bit()?);
        }
        Some(v)
    }

    /// Unsigned exp-Golomb. Values past 2^31 do not occur in a valid SPS.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        ((1u64 << zeros) - 1 + u64::from(rest)).try_into().ok()
    }

    /// Signed exp-Golomb: 1, -1, 2, -2, ...
    fn se(&mut self) -> Option<i32> {
        let k = i64::from(self.ue()?);
        let v = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        i32::try_from(v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPSs x264 wrote (`ffmpeg -f lavfi -i testsrc=size=WxH ... -c:v libx264
    // [-pix_fmt yuv420p] [-profile:v P] -f h264`), copied out of the stream.
    const SPS_320X240_HIGH: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xb2, 0x02, 0x83, 0xf6, 0x02, 0x20, 0x00, 0x00, 0x03, 0x00,
        0x20, 0x00, 0x00, 0x07, 0x81, 0xe2, 0x85, 0x49,
    ];
    const SPS_320X240_HIGH444: &[u8] = &[
        0x67, 0xf4, 0x00, 0x0d, 0x91, 0x96, 0x40, 0x50, 0x7e, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00,
        0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x50, 0xa9, 0x20,
    ];
    const SPS_1280X720_BASELINE: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80,
    ];
    /// 1080 is not a multiple of 16: 68 macroblock rows, cropped by 8.
    const SPS_1920X1080_MAIN: &[u8] = &[
        0x67, 0x4d, 0x40, 0x28, 0xec, 0xa0, 0x3c, 0x01, 0x13, 0xf2, 0xe0, 0x22, 0x00, 0x00, 0x03,
        0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x78, 0x1e, 0x30, 0x63, 0x2c,
    ];

    #[test]
    fn reads_size_and_profile_of_x264_spss() {
        let info = parse_sps(SPS_320X240_HIGH).unwrap();
        assert_eq!((info.width, info.height), (320, 240));
        assert_eq!((info.profile_idc, info.level_idc), (100, 13));
        assert_eq!(info.chroma_format_idc, 1);
        assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (8, 8));

        let info = parse_sps(SPS_320X240_HIGH444).unwrap();
        assert_eq!((info.width, info.height), (320, 240));
        assert_eq!((info.profile_idc, info.chroma_format_idc), (244, 3));

        let info = parse_sps(SPS_1280X720_BASELINE).unwrap();
        assert_eq!((info.width, info.height), (1280, 720));
        assert_eq!(
            (info.profile_idc, info.constraint_flags, info.level_idc),
            (66, 0xc0, 31)
        );

        let info = parse_sps(SPS_1920X1080_MAIN).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
        assert_eq!(info.profile_idc, 77);
    }

    #[test]
    fn applies_cropping_of_a_handmade_sps() {
        // Baseline 1920x1080: 120x68 macroblocks, cropped 8 rows at the
        // bottom (frame_crop_bottom_offset = 4, in 2-row units for 4:2:0).
        // Built bit by bit so the test states what it checks.
        let mut w = BitWriter::default();
        w.bits(66, 8); // profile_idc
        w.bits(0xc0, 8);
        w.bits(40, 8); // level 4.0
        w.ue(0); // sps id
        w.ue(0); // log2_max_frame_num - 4
        w.ue(2); // poc type 2
        w.ue(1); // max refs
        w.bit(false);
        w.ue(119); // width in mbs - 1
        w.ue(67); // height in map units - 1
        w.bit(true); // frame_mbs_only
        w.bit(true); // direct_8x8
        w.bit(true); // cropping
        w.ue(0);
        w.ue(0);
        w.ue(0);
        w.ue(4);
        w.bit(false); // vui
        let mut nal = vec![0x67];
        nal.extend(w.finish());
        let info = parse_sps(&nal).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert_eq!(parse_sps(&[]), None);
        assert_eq!(parse_sps(&[0x68, 1, 2, 3]), None);
        assert_eq!(parse_sps(&[0x67, 0x64, 0, 0]), None);
        assert_eq!(parse_sps(&[0x67, 0x42, 0, 0x1e, 0, 0, 0, 0, 0, 0]), None);
        // Every prefix of a real SPS: None or Some, never a panic.
        for n in 0..SPS_320X240_HIGH.len() {
            let _ = parse_sps(&SPS_320X240_HIGH[..n]);
        }
    }

    #[test]
    fn unescapes_emulation_prevention() {
        assert_eq!(unescape(&[0, 0, 3, 1, 0, 0, 3, 0]), vec![0, 0, 1, 0, 0, 0]);
    }

    #[derive(Default)]
    struct BitWriter {
        out: Vec<u8>,
        n: usize,
    }

    impl BitWriter {
        fn bit(&mut self, b: bool) {
            if self.n.is_multiple_of(8) {
                self.out.push(0);
            }
            if b {
                *self.out.last_mut().unwrap() |= 0x80 >> (self.n % 8);
            }
            self.n += 1;
        }
        fn bits(&mut self, v: u32, n: u32) {
            for i in (0..n).rev() {
                self.bit((v >> i) & 1 == 1);
            }
        }
        fn ue(&mut self, v: u32) {
            let x = v + 1;
            let len = 32 - x.leading_zeros();
            self.bits(0, len - 1);
            self.bits(x, len);
        }
        fn finish(mut self) -> Vec<u8> {
            self.bit(true); // rbsp stop bit
            self.out
        }
    }
}
