//! A tiny reader and writer of NumPy `.npy` files holding little-endian `f32` or `i32` arrays
//! in C order: enough for reference values in tests and for dumping activations.
//!
//! Format: magic `\x93NUMPY`, major and minor version bytes, the header length (`u16` in version
//! 1, `u32` in versions 2 and 3), then the header — a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (512, 256), }` padded with spaces and a
//! newline so the data starts at a multiple of 64 — then the raw data.

use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A `.npy` file could not be read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not a .npy file weft reads: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: holds dtype {found:?}, expected {expected:?}", path.display())]
    DType {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("{}: shape {dims:?} does not hold {len} values", path.display())]
    Shape {
        path: PathBuf,
        dims: Vec<usize>,
        len: usize,
    },
}

/// An element type stored as 4 little-endian bytes.
trait Element: Copy {
    const DESCR: &'static str;
    fn from_le(b: [u8; 4]) -> Self;
    fn to_le(self) -> [u8; 4];
}

impl Element for f32 {
    const DESCR: &'static str = "<f4";
    fn from_le(b: [u8; 4]) -> Self {
        f32::from_le_bytes(b)
    }
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl Element for i32 {
    const DESCR: &'static str = "<i4";
    fn from_le(b: [u8; 4]) -> Self {
        i32::from_le_bytes(b)
    }
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

/// Reads an `<f4` array: its shape (C order, outermost first) and values.
pub fn read_f32(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    read(path.as_ref())
}

/// Reads an `<i4` array: its shape (C order, outermost first) and values.
pub fn read_i32(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<i32>), NpyError> {
    read(path.as_ref())
}

/// Writes `data` as an `<f4` array of shape `dims` (C order; `[]` for a scalar).
pub fn write_f32(path: impl AsRef<Path>, dims: &[usize], data: &[f32]) -> Result<(), NpyError> {
    write(path.as_ref(), dims, data)
}

/// Writes `data` as an `<i4` array of shape `dims` (C order; `[]` for a scalar).
pub fn write_i32(path: impl AsRef<Path>, dims: &[usize], data: &[i32]) -> Result<(), NpyError> {
    write(path.as_ref(), dims, data)
}

fn read<T: Element>(path: &Path) -> Result<(Vec<usize>, Vec<T>), NpyError> {
    let bytes = std::fs::read(path).map_err(|error| NpyError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    decode(path, &bytes)
}

fn write<T: Element>(path: &Path, dims: &[usize], data: &[T]) -> Result<(), NpyError> {
    let bytes = encode(path, dims, data)?;
    std::fs::write(path, bytes).map_err(|error| NpyError::Io {
        path: path.to_path_buf(),
        error,
    })
}

fn decode<T: Element>(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<T>), NpyError> {
    let format = |reason: String| NpyError::Format {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.get(..6) != Some(MAGIC.as_slice()) {
        return Err(format("bad magic".into()));
    }
    let (header_len, start): (usize, usize) =
        match (bytes.get(6), bytes.get(8..10), bytes.get(8..12)) {
            (Some(1), Some(&[a, b]), _) => (usize::from(u16::from_le_bytes([a, b])), 10),
            (Some(2 | 3), _, Some(&[a, b, c, d])) => {
                (u32::from_le_bytes([a, b, c, d]) as usize, 12)
            }
            (Some(&v), Some(_), _) if !matches!(v, 1..=3) => {
                return Err(format(format!("unsupported version {v}")));
            }
            _ => return Err(format("truncated header".into())),
        };
    let data_start = start
        .checked_add(header_len)
        .ok_or_else(|| format("header length overflows".into()))?;
    let header = bytes
        .get(start..data_start)
        .ok_or_else(|| format("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| format("header is not UTF-8".into()))?;
    let h = Header::parse(header).map_err(format)?;
    if h.descr != T::DESCR {
        return Err(NpyError::DType {
            path: path.to_path_buf(),
            found: h.descr,
            expected: T::DESCR,
        });
    }
    if h.fortran_order {
        return Err(format("Fortran order is not supported".into()));
    }
    let n = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format(format!("shape {:?} overflows", h.shape)))?;
    let data = bytes.get(data_start..).unwrap_or_default();
    if Some(data.len()) != n.checked_mul(4) {
        return Err(format(format!(
            "shape {:?} needs {n} values, the file holds {} bytes of data",
            h.shape,
            data.len()
        )));
    }
    let (chunks, _) = data.as_chunks::<4>();
    Ok((h.shape, chunks.iter().map(|&c| T::from_le(c)).collect()))
}

fn encode<T: Element>(path: &Path, dims: &[usize], data: &[T]) -> Result<Vec<u8>, NpyError> {
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(data.len()) {
        return Err(NpyError::Shape {
            path: path.to_path_buf(),
            dims: dims.to_vec(),
            len: data.len(),
        });
    }
    let shape = match dims {
        [d] => format!("({d},)"),
        _ => {
            let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        T::DESCR
    );
    // Version 1 has a u16 header length; longer headers (absurdly many dims) need version 2.
    let v1 = header.len() < 65000;
    let preamble = if v1 { 10 } else { 12 };
    let pad = (64 - (preamble + header.len() + 1) % 64) % 64;
    header.extend(std::iter::repeat_n(' ', pad));
    header.push('\n');
    let mut out = Vec::with_capacity(preamble + header.len() + 4 * data.len());
    out.extend_from_slice(MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    for &x in data {
        out.extend_from_slice(&x.to_le());
    }
    Ok(out)
}

/// The three keys of a `.npy` header.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value of the header dict.
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

impl Header {
    /// Parses the dict literal numpy writes: string keys, values that are strings, booleans or
    /// tuples of integers.
    fn parse(text: &str) -> Result<Header, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            pos: 0,
        };
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        p.expect(b'{')?;
        loop {
            if p.eat(b'}') {
                break;
            }
            let key = p.string()?;
            p.expect(b':')?;
            let value = p.literal()?;
            match (key.as_str(), value) {
                ("descr", Literal::Str(s)) => descr = Some(s),
                ("fortran_order", Literal::Bool(b)) => fortran_order = Some(b),
                ("shape", Literal::Tuple(t)) => shape = Some(t),
                (k, _) => return Err(format!("unexpected header entry {k:?}")),
            }
            if !p.eat(b',') {
                p.expect(b'}')?;
                break;
            }
        }
        match (descr, fortran_order, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header {
                descr,
                fortran_order,
                shape,
            }),
            _ => Err("header lacks descr, fortran_order or shape".into()),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    /// Skips whitespace, then consumes `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        let found = self.s.get(self.pos) == Some(&c);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "expected {:?} at byte {} of the header",
                c as char, self.pos
            ))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let quote = match self.s.get(self.pos) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(format!(
                    "expected a string at byte {} of the header",
                    self.pos
                ));
            }
        };
        let start = self.pos + 1;
        let len = self
            .s
            .get(start..)
            .and_then(|rest| rest.iter().position(|&c| c == quote))
            .ok_or("unterminated string in the header")?;
        self.pos = start + len + 1;
        let body = self.s.get(start..start + len).unwrap_or_default();
        Ok(String::from_utf8_lossy(body).into_owned())
    }

    fn word(&mut self) -> &[u8] {
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(u8::is_ascii_alphanumeric) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or_default()
    }

    fn literal(&mut self) -> Result<Literal, String> {
        self.skip_ws();
        match self.s.get(self.pos) {
            Some(b'\'' | b'"') => self.string().map(Literal::Str),
            Some(b'(') => {
                self.pos += 1;
                let mut dims = Vec::new();
                while !self.eat(b')') {
                    let w = self.word();
                    let d = std::str::from_utf8(w)
                        .ok()
                        .and_then(|w| w.parse::<usize>().ok())
                        .ok_or_else(|| {
                            format!("bad dimension at byte {} of the header", self.pos)
                        })?;
                    dims.push(d);
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        break;
                    }
                }
                Ok(Literal::Tuple(dims))
            }
            _ => match self.word() {
                b"True" => Ok(Literal::Bool(true)),
                b"False" => Ok(Literal::Bool(false)),
                _ => Err(format!(
                    "unexpected value at byte {} of the header",
                    self.pos
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.npy")
    }

    #[test]
    fn encode_decode_round_trip() {
        let cases: [&[usize]; 4] = [&[], &[3], &[2, 3], &[2, 0, 5]];
        for dims in cases {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
            let bytes = encode(p(), dims, &v).unwrap();
            assert_eq!(
                bytes.len() % 64,
                (4 * n) % 64,
                "data starts at a multiple of 64"
            );
            let (d, back) = decode::<f32>(p(), &bytes).unwrap();
            assert_eq!((d.as_slice(), back), (dims, v));
            let ints: Vec<i32> = (0..n as i32).map(|i| i - 3).collect();
            let bytes = encode(p(), dims, &ints).unwrap();
            assert_eq!(decode::<i32>(p(), &bytes).unwrap(), (dims.to_vec(), ints));
        }
    }

    #[test]
    fn header_matches_numpy() {
        let bytes = encode(p(), &[512, 256], &vec![0.0f32; 512 * 256]).unwrap();
        let header = std::str::from_utf8(&bytes[10..128]).unwrap();
        assert_eq!(
            header.trim_end(),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (512, 256), }"
        );
        assert_eq!(&bytes[..10], b"\x93NUMPY\x01\x00\x76\x00");
        let one = encode(p(), &[7], &[0i32; 7]).unwrap();
        assert!(std::str::from_utf8(&one[10..64]).unwrap().contains("(7,)"));
    }

    #[test]
    fn version_2_header_and_other_layouts_parse() {
        let header = "{\"shape\": (2,), \"fortran_order\": False, \"descr\": \"<f4\"}\n";
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[2, 0]);
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&1.5f32.to_le_bytes());
        b.extend_from_slice(&(-2.0f32).to_le_bytes());
        assert_eq!(decode::<f32>(p(), &b).unwrap(), (vec![2], vec![1.5, -2.0]));
    }

    #[test]
    fn errors_name_the_file_and_never_panic() {
        let good = encode(p(), &[2, 2], &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let e = decode::<i32>(p(), &good).unwrap_err();
        assert!(matches!(e, NpyError::DType { .. }), "{e}");
        assert!(e.to_string().starts_with("t.npy: "), "{e}");
        for len in 0..good.len() {
            let e = decode::<f32>(p(), &good[..len]).unwrap_err();
            assert!(e.to_string().contains("t.npy"), "{e}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode::<f32>(p(), &longer).is_err());
        let mut fortran = good.clone();
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        let e = decode::<f32>(p(), &fortran).unwrap_err();
        assert!(e.to_string().contains("Fortran"), "{e}");
        for i in 0..80 {
            for x in [0u8, b'(', b')', b',', b'\'', b'9', 0xFF] {
                let mut b = good.clone();
                b[i] = x;
                let _ = decode::<f32>(p(), &b);
            }
        }
        let e = encode(p(), &[3, 2], &[0.0f32; 5]).unwrap_err();
        assert!(matches!(e, NpyError::Shape { .. }), "{e}");
        assert!(encode(p(), &[usize::MAX, 2], &[0.0f32; 0]).is_err());
    }

    #[test]
    fn files_round_trip() {
        let dir = std::env::temp_dir().join(format!("weft-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.npy");
        write_f32(&f, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(
            read_f32(&f).unwrap(),
            (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        write_i32(&f, &[2], &[7, -8]).unwrap();
        assert_eq!(read_i32(&f).unwrap(), (vec![2], vec![7, -8]));
        std::fs::remove_dir_all(&dir).unwrap();
        let e = read_f32(&f).unwrap_err();
        assert!(
            matches!(e, NpyError::Io { .. }) && e.to_string().contains("x.npy"),
            "{e}"
        );
    }
}
