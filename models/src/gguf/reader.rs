//! The parser: a bounds-checked cursor over the file's bytes, reading the header, the metadata
//! and the tensor infos, then validating every tensor's type, size and data range.
//!
//! Nothing here indexes or slices without a check. A count read from the file is compared with
//! the bytes left before anything is allocated for it, and what is reserved up front is capped
//! (see [`capacity`]), so a damaged multi-gigabyte file cannot trigger a huge allocation.

use super::TensorInfo;
use super::error::{GgufErrorKind, Section};
use super::ggml::{GgmlType, ggml_type};
use super::value::{Array, Value, ValueType};
use std::collections::HashMap;
use weft_graph::DType;

type Result<T> = std::result::Result<T, GgufErrorKind>;

/// Default of `general.alignment`.
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
/// Most levels of arrays inside arrays (real files nest at most one); bounds the recursion.
pub(crate) const MAX_NESTING: usize = 8;
/// ggml's `GGML_MAX_DIMS`.
pub(crate) const MAX_DIMS: u32 = 4;
/// Most elements reserved up front for a list read from the file.
const MAX_PREALLOC: usize = 1 << 16;
/// Smallest metadata entry: key length, empty key, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest tensor info: name length, empty name, n_dims, one dimension, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// Everything the header, metadata and tensor infos say, checked.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    pub data_offset: u64,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    section: Section,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.bytes.len().saturating_sub(self.pos) as u64
    }

    fn truncated(&self, needed: u64) -> GgufErrorKind {
        GgufErrorKind::Truncated {
            section: self.section.clone(),
            offset: self.pos as u64,
            needed,
            len: self.bytes.len() as u64,
        }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| Some((self.bytes.get(self.pos..end)?, end)));
        let (s, end) = slice.ok_or_else(|| self.truncated(n))?;
        self.pos = end;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N as u64)?;
        <[u8; N]>::try_from(s).map_err(|_| self.truncated(N as u64))
    }

    fn u32(&mut self) -> Result<u32> {
        self.fixed().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        self.fixed().map(u64::from_le_bytes)
    }

    /// A count of things each at least `min_bytes` long, refused when the rest of the file
    /// cannot hold that many.
    fn count(&mut self, what: &'static str, min_bytes: u64) -> Result<usize> {
        let count = self.u64()?;
        let remaining = self.remaining();
        match count.checked_mul(min_bytes) {
            Some(need) if need <= remaining => {
                usize::try_from(count).map_err(|_| self.truncated(need))
            }
            _ => Err(GgufErrorKind::CountTooLarge {
                section: self.section.clone(),
                what,
                count,
                remaining,
            }),
        }
    }

    fn string(&mut self) -> Result<String> {
        let len = self.count("string length", 1)?;
        let bytes = self.take(len as u64)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufErrorKind::NotUtf8 {
                section: self.section.clone(),
            }),
        }
    }

    /// `count` fixed-size little-endian numbers (`count` already checked against the bytes left).
    fn numbers<T, const N: usize>(
        &mut self,
        count: usize,
        decode: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let total = (count as u64).saturating_mul(N as u64);
        let (chunks, _) = self.take(total)?.as_chunks::<N>();
        Ok(chunks.iter().map(|&c| decode(c)).collect())
    }

    fn value_type(&mut self, key: &str) -> Result<ValueType> {
        let type_id = self.u32()?;
        ValueType::from_id(type_id).ok_or_else(|| GgufErrorKind::UnknownValueType {
            key: key.to_owned(),
            type_id,
        })
    }

    fn value(&mut self, ty: ValueType, key: &str) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.fixed()?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.fixed()?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.fixed()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.fixed()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.fixed()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.fixed()?)),
            ValueType::Bool => Value::Bool(self.fixed::<1>()? != [0]),
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => Value::Array(self.array(key, 1)?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.fixed()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.fixed()?)),
        })
    }

    /// An array (element type, count, elements) at nesting level `depth` (1 = outermost).
    fn array(&mut self, key: &str, depth: usize) -> Result<Array> {
        if depth > MAX_NESTING {
            return Err(GgufErrorKind::NestingTooDeep {
                key: key.to_owned(),
                max: MAX_NESTING,
            });
        }
        let ty = self.value_type(key)?;
        let n = self.count("array length", ty.min_bytes())?;
        Ok(match ty {
            ValueType::U8 => Array::U8(self.numbers(n, u8::from_le_bytes)?),
            ValueType::I8 => Array::I8(self.numbers(n, i8::from_le_bytes)?),
            ValueType::U16 => Array::U16(self.numbers(n, u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(self.numbers(n, i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(self.numbers(n, u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(self.numbers(n, i32::from_le_bytes)?),
            ValueType::F32 => Array::F32(self.numbers(n, f32::from_le_bytes)?),
            ValueType::Bool => Array::Bool(self.numbers(n, |[b]: [u8; 1]| b != 0)?),
            ValueType::U64 => Array::U64(self.numbers(n, u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(self.numbers(n, i64::from_le_bytes)?),
            ValueType::F64 => Array::F64(self.numbers(n, f64::from_le_bytes)?),
            ValueType::String => {
                let mut v = Vec::with_capacity(capacity(n));
                for _ in 0..n {
                    v.push(self.string()?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(capacity(n));
                for _ in 0..n {
                    v.push(self.array(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

/// Parses and validates the whole header of a GGUF file held in `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        section: Section::Header,
    };
    let magic: [u8; 4] = c.fixed()?;
    if &magic != b"GGUF" {
        return Err(GgufErrorKind::BadMagic(magic));
    }
    let version = c.u32()?;
    match version {
        2 | 3 => {}
        v if matches!(v.swap_bytes(), 2 | 3) => return Err(GgufErrorKind::BigEndian),
        v => return Err(GgufErrorKind::UnsupportedVersion(v)),
    }
    let n_tensors = c.count("tensor count", MIN_TENSOR_INFO_BYTES)?;
    let n_kv = c.count("metadata entry count", MIN_KV_BYTES)?;
    let (metadata, key_index) = read_metadata(&mut c, n_kv)?;
    let alignment = alignment(&metadata, &key_index)?;
    let (mut tensors, tensor_index) = read_tensor_infos(&mut c, n_tensors, alignment)?;
    let data_offset = (c.pos as u64)
        .checked_next_multiple_of(alignment)
        .unwrap_or(u64::MAX);
    place_tensors(&mut tensors, data_offset, bytes.len() as u64)?;
    Ok(Parsed {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

/// Room for `n` things read from the file, capped: an absurd count that passed the size check
/// (in a huge file) grows the vector as elements really arrive instead of reserving it all.
fn capacity(n: usize) -> usize {
    n.min(MAX_PREALLOC)
}

type Metadata = (Vec<(String, Value)>, HashMap<String, usize>);

fn read_metadata(c: &mut Cursor<'_>, n_kv: usize) -> Result<Metadata> {
    let mut metadata = Vec::with_capacity(capacity(n_kv));
    let mut key_index = HashMap::with_capacity(capacity(n_kv));
    for i in 0..n_kv {
        c.section = Section::Key(i as u64);
        let key = c.string()?;
        c.section = Section::Value(key.clone());
        let ty = c.value_type(&key)?;
        let value = c.value(ty, &key)?;
        if key_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufErrorKind::DuplicateKey { key });
        }
        metadata.push((key, value));
    }
    Ok((metadata, key_index))
}

/// The tensor infos, with offsets still relative to the data section.
fn read_tensor_infos(
    c: &mut Cursor<'_>,
    n_tensors: usize,
    alignment: u64,
) -> Result<(Vec<TensorInfo>, HashMap<String, usize>)> {
    let mut tensors = Vec::with_capacity(capacity(n_tensors));
    let mut index = HashMap::with_capacity(capacity(n_tensors));
    for i in 0..n_tensors {
        c.section = Section::TensorName(i as u64);
        let name = c.string()?;
        c.section = Section::TensorInfo(name.clone());
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufErrorKind::BadDimCount {
                tensor: name,
                n_dims,
            });
        }
        let mut dims_gguf = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims_gguf.push(c.u64()?);
        }
        let type_id = c.u32()?;
        let offset = c.u64()?;
        let dtype = match ggml_type(type_id) {
            Some(GgmlType::Supported(d)) => d,
            Some(GgmlType::Unsupported(type_name)) => {
                return Err(GgufErrorKind::UnsupportedTensorType {
                    tensor: name,
                    type_name,
                });
            }
            None => {
                return Err(GgufErrorKind::UnknownTensorType {
                    tensor: name,
                    type_id,
                });
            }
        };
        let bytes = tensor_bytes(&name, &dims_gguf, dtype)?;
        if offset % alignment != 0 {
            return Err(GgufErrorKind::MisalignedTensor {
                tensor: name,
                offset,
                alignment,
            });
        }
        if index.insert(name.clone(), tensors.len()).is_some() {
            return Err(GgufErrorKind::DuplicateTensor { name });
        }
        tensors.push(TensorInfo {
            name,
            dims_gguf,
            dtype,
            offset,
            bytes,
        });
    }
    Ok((tensors, index))
}

/// Turns relative offsets into absolute ones, checking that every tensor's data lies within
/// the file (`len` bytes) and that no two overlap.
fn place_tensors(tensors: &mut [TensorInfo], data_offset: u64, len: u64) -> Result<()> {
    for t in tensors.iter_mut() {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.bytes as u64));
        match (start, end) {
            (Some(start), Some(end)) if end <= len => t.offset = start,
            _ => {
                return Err(GgufErrorKind::DataOutOfBounds {
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    len,
                });
            }
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if let [a, b] = pair
            && a.offset + a.bytes as u64 > b.offset
        {
            return Err(GgufErrorKind::OverlappingTensors {
                first: a.name.clone(),
                second: b.name.clone(),
            });
        }
    }
    Ok(())
}

/// `general.alignment`: an integer that is a power of two, 32 when absent.
fn alignment(metadata: &[(String, Value)], index: &HashMap<String, usize>) -> Result<u64> {
    const KEY: &str = "general.alignment";
    let Some((_, v)) = index.get(KEY).and_then(|&i| metadata.get(i)) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let a = v.as_u32().ok_or_else(|| GgufErrorKind::WrongType {
        key: KEY.into(),
        expected: "u32",
        found: v.describe(),
    })?;
    if !a.is_power_of_two() {
        return Err(GgufErrorKind::BadAlignment(a.into()));
    }
    Ok(a.into())
}

/// Bytes of a tensor of `dims` (GGUF order) stored as `dtype`, checking that rows are whole
/// blocks and that no size overflows: the product of the dimensions, each counted as at least 1
/// (so a zero-sized tensor cannot hide an absurd one), must fit in both `i64` and `usize`.
fn tensor_bytes(name: &str, dims: &[u64], dtype: DType) -> Result<usize> {
    let overflow = || GgufErrorKind::SizeOverflow {
        tensor: name.to_owned(),
        dims: dims.to_vec(),
    };
    let bound = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d.max(1)));
    if bound.is_none_or(|b| b > i64::MAX as u64 || usize::try_from(b).is_err()) {
        return Err(overflow());
    }
    let numel: u64 = dims.iter().product();
    let row = dims.first().copied().unwrap_or(1);
    let block = dtype.block_elems();
    if row % block as u64 != 0 {
        return Err(GgufErrorKind::RowNotBlockMultiple {
            tensor: name.to_owned(),
            dtype,
            row,
            block,
        });
    }
    (numel / block as u64)
        .checked_mul(dtype.block_bytes() as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(overflow)
}
