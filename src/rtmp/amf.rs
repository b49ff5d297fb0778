//! A small, bounded AMF0 reader. Two jobs:
//! - vet every AMF0 command/data message before the RTMP crate decodes it.
//!   scuffle-amf0 0.2.4 trusts the element count of ECMA and strict arrays
//!   (`with_capacity(count)`: a 4-byte count of 0xffffffff aborts the
//!   process on allocation) and recurses without a depth limit (nested
//!   objects overflow the stack). Both kill the whole server, not one
//!   connection, so they are refused here first.
//! - read onMetaData, whose ECMA array FFmpeg ends with an object-end marker
//!   that scuffle-amf0 does not expect after a counted array.

/// Deepest nesting accepted. Real commands and metadata nest 2-3 levels.
const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Amf0 {
    Number(f64),
    Bool(bool),
    String(String),
    /// Objects, typed objects and ECMA arrays alike: ordered pairs.
    Object(Vec<(String, Amf0)>),
    Array(Vec<Amf0>),
    Null,
}

impl Amf0 {
    pub(crate) fn get(&self, key: &str) -> Option<&Amf0> {
        match self {
            Amf0::Object(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Amf0::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Amf0::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Decodes every value in `data`; any malformed, unsupported, too deep or
/// over-counted structure is an error naming what was wrong.
pub(crate) fn decode_all(data: &[u8]) -> Result<Vec<Amf0>, String> {
    let mut r = Reader { data, pos: 0 };
    let mut values = Vec::new();
    while r.pos < data.len() {
        values.push(r.value(0)?);
    }
    Ok(values)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| format!("AMF0 value cut off at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, String> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .map_err(|_| "AMF0 length does not fit".to_string())
    }

    fn string(&mut self, len: usize) -> Result<String, String> {
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn value(&mut self, depth: usize) -> Result<Amf0, String> {
        if depth > MAX_DEPTH {
            return Err(format!("AMF0 nested deeper than {MAX_DEPTH} levels"));
        }
        let marker = self.u8()?;
        Ok(match marker {
            0x00 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Amf0::Number(f64::from_be_bytes(a))
            }
            0x01 => Amf0::Bool(self.u8()? != 0),
            0x02 => {
                let n = self.u16()?;
                Amf0::String(self.string(n)?)
            }
            0x03 => Amf0::Object(self.pairs(depth, None)?),
            0x05 | 0x06 => Amf0::Null,
            0x08 => {
                let count = self.u32()?;
                // Each entry takes at least 3 bytes (key length + marker).
                if count > self.remaining() / 3 {
                    return Err(format!(
                        "AMF0 ECMA array claims {count} entries in {} bytes",
                        self.remaining()
                    ));
                }
                Amf0::Object(self.pairs(depth, Some(count))?)
            }
            0x0a => {
                let count = self.u32()?;
                if count > self.remaining() {
                    return Err(format!(
                        "AMF0 strict array claims {count} values in {} bytes",
                        self.remaining()
                    ));
                }
                let mut v = Vec::with_capacity(count);
                for _ in 0..count {
                    v.push(self.value(depth + 1)?);
                }
                Amf0::Array(v)
            }
            0x0b => {
                // Date: ms since epoch + time zone.
                let ms = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(ms);
                self.take(2)?;
                Amf0::Number(f64::from_be_bytes(a))
            }
            0x0c | 0x0f => {
                let n = self.u32()?;
                Amf0::String(self.string(n)?)
            }
            0x10 => {
                let n = self.u16()?;
                self.take(n)?; // class name
                Amf0::Object(self.pairs(depth, None)?)
            }
            other => return Err(format!("unsupported AMF0 marker 0x{other:02x}")),
        })
    }

    /// Key/value pairs up to the object-end marker (`00 00 09`), or `count`
    /// of them for an ECMA array (whose end marker is optional).
    fn pairs(&mut self, depth: usize, count: Option<usize>) -> Result<Vec<(String, Amf0)>, String> {
        let mut pairs = Vec::with_capacity(count.unwrap_or(0));
        loop {
            if count.is_some_and(|c| pairs.len() == c) {
                // Optional trailing end marker after a counted array.
                if self.data.get(self.pos..self.pos + 3) == Some(&[0, 0, 9]) {
                    self.pos += 3;
                }
                return Ok(pairs);
            }
            let n = self.u16()?;
            if n == 0 && self.data.get(self.pos) == Some(&0x09) {
                self.pos += 1;
                return Ok(pairs);
            }
            let key = self.string(n)?;
            let v = self.value(depth + 1)?;
            pairs.push((key, v));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// AMF0 writer helpers for tests (here and in session tests).
    pub(crate) fn num(v: f64) -> Vec<u8> {
        let mut o = vec![0x00];
        o.extend_from_slice(&v.to_be_bytes());
        o
    }

    pub(crate) fn string(s: &str) -> Vec<u8> {
        let mut o = vec![0x02];
        o.extend_from_slice(&(s.len() as u16).to_be_bytes());
        o.extend_from_slice(s.as_bytes());
        o
    }

    pub(crate) fn key(s: &str) -> Vec<u8> {
        let mut o = (s.len() as u16).to_be_bytes().to_vec();
        o.extend_from_slice(s.as_bytes());
        o
    }

    #[test]
    fn ffmpeg_style_metadata() {
        let mut d = string("@setDataFrame");
        d.extend(string("onMetaData"));
        d.extend([0x08, 0, 0, 0, 2]);
        d.extend(key("width"));
        d.extend(num(320.0));
        d.extend(key("encoder"));
        d.extend(string("Lavf"));
        d.extend([0, 0, 9]);
        let v = decode_all(&d).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2].get("width").and_then(Amf0::as_f64), Some(320.0));
        assert_eq!(v[2].get("encoder").and_then(Amf0::as_str), Some("Lavf"));
    }

    #[test]
    fn absurd_counts_and_depth_are_refused() {
        assert!(decode_all(&[0x08, 0xff, 0xff, 0xff, 0xff, 0, 0, 9]).is_err());
        assert!(decode_all(&[0x0a, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_all(&[0x02, 0xff, 0xff, b'a']).is_err());
        assert!(decode_all(&[0x0c, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut deep = Vec::new();
        for _ in 0..100_000 {
            deep.extend([0x03, 0, 1, b'a']);
        }
        assert!(decode_all(&deep).unwrap_err().contains("deeper"));
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let v: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.5) {
                        rng.random_range(0..0x12)
                    } else {
                        rng.random()
                    }
                })
                .collect();
            let _ = decode_all(&v);
        }
    }
}
