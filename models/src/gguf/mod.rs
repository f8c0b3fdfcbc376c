//! Reading GGUF files: metadata and zero-copy tensor data.
//!
//! A GGUF file (all little endian) is
//!
//! 1. a header: magic `"GGUF"`, version `u32` (weft reads 2 and 3), tensor count `u64`,
//!    metadata entry count `u64`;
//! 2. the metadata: for each entry a key (a GGUF string: `u64` byte length, then UTF-8), a
//!    value type `u32` and the value. Types 0–12 are `u8 i8 u16 i16 u32 i32 f32 bool string
//!    array u64 i64 f64`; an array is an element type `u32`, a count `u64` and the elements
//!    (arrays may hold arrays);
//! 3. the tensor infos: name, `n_dims: u32`, `n_dims` × `u64` dimensions **innermost first**
//!    (ggml's `ne[0]` is the row length), ggml type `u32`, and an offset `u64` relative to the
//!    data section;
//! 4. padding up to `general.alignment` (32 when absent), then the data section.
//!
//! [`GgufFile::open`] memory-maps the file and checks everything before returning: every read
//! is bounds-checked, counts are compared with the bytes left before anything is allocated,
//! tensor types must be ones weft computes with, rows must be whole quantization blocks, and
//! every tensor's data must be aligned, inside the file, and not overlap another's. Malformed
//! input gives a [`GgufError`] naming the file and the key or tensor at fault; it never panics.

mod error;
mod ggml;
mod reader;
mod value;

pub use error::{GgufError, GgufErrorKind, Section};
pub use ggml::ggml_type_id;
pub use value::{Array, Value, ValueType};

use memmap2::Mmap;
use reader::Parsed;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weft_backends::HostBytes;
use weft_graph::DType;

/// One tensor's entry in the file, validated: its data lies within the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGUF order: innermost (the row length) first, like ggml's `ne`.
    pub dims_gguf: Vec<u64>,
    pub dtype: DType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: usize,
}

impl TensorInfo {
    /// Dimensions in weft's row-major order (outermost first): `dims_gguf` reversed.
    pub fn dims(&self) -> Vec<usize> {
        // No cast truncates: the parser checked that the product of the dimensions fits.
        self.dims_gguf.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims_gguf.iter().map(|&d| d as usize).product()
    }
}

/// The bytes of a file (memory-mapped, or owned), shared with the buffers of a backend that
/// reads the weights in place.
type Storage = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A parsed GGUF file. Tensor data is borrowed straight from the mapping or buffer.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    parsed: Parsed,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.parsed.version)
            .field("metadata", &self.parsed.metadata.len())
            .field("tensors", &self.parsed.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    ///
    /// The file is opened read-only and mapped for as long as the `GgufFile` lives. As with
    /// every memory-mapped loader, the caller must make sure nobody truncates or rewrites the
    /// file in the meantime: the checks made here cannot see later changes, and a truncated
    /// mapping faults on access.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |e| GgufError::new(path, GgufErrorKind::Io(e));
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and private to this process's view of a file we
        // opened read-only; the one hazard, another process changing or truncating the file
        // while it is mapped, is the caller's responsibility (see above). The bytes are only
        // ever read as plain `u8`, so any content is a valid value.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), Arc::new(map))
    }

    /// Parses a file held in memory; errors name it `<memory>`.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_bytes_named("<memory>", bytes)
    }

    /// Parses a file held in memory; errors name it `name`.
    pub fn from_bytes_named(
        name: impl Into<PathBuf>,
        bytes: Vec<u8>,
    ) -> Result<GgufFile, GgufError> {
        Self::parse(name.into(), Arc::new(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<GgufFile, GgufError> {
        match reader::parse((*storage).as_ref()) {
            Ok(parsed) => Ok(GgufFile {
                path,
                storage,
                parsed,
            }),
            Err(kind) => Err(GgufError::new(path, kind)),
        }
    }

    fn err(&self, kind: GgufErrorKind) -> GgufError {
        GgufError::new(&self.path, kind)
    }

    /// The path given to [`GgufFile::open`] (or the name of in-memory bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        (*self.storage).as_ref()
    }

    /// GGUF version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.parsed.version
    }

    /// `general.alignment`, or its default 32.
    pub fn alignment(&self) -> u64 {
        self.parsed.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.parsed.data_offset
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.parsed.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.parsed.key_index.get(key)?;
        self.parsed.metadata.get(i).map(|(_, v)| v)
    }

    /// `key` converted by `conv`; `Ok(None)` when absent, an error when `conv` refuses it.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        conv: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        conv(v).map(Some).ok_or_else(|| {
            self.err(GgufErrorKind::WrongType {
                key: key.to_owned(),
                expected,
                found: v.describe(),
            })
        })
    }

    fn required<T>(&self, key: &str, v: Result<Option<T>, GgufError>) -> Result<T, GgufError> {
        v?.ok_or_else(|| self.err(GgufErrorKind::MissingKey(key.to_owned())))
    }

    /// An integer of any type that fits in `u32`; `Ok(None)` when absent.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.typed(key, "an integer that fits in u32", Value::as_u32)
    }

    /// An integer of any type that fits in `u64`; `Ok(None)` when absent.
    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    /// An integer of any type that fits in `usize`; `Ok(None)` when absent.
    pub fn get_usize_opt(&self, key: &str) -> Result<Option<usize>, GgufError> {
        self.typed(key, "a non-negative integer", Value::as_usize)
    }

    /// An `f32` (or an `f64`, rounded); `Ok(None)` when absent.
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.typed(key, "a float", Value::as_f32)
    }

    /// A bool; `Ok(None)` when absent.
    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "a bool", Value::as_bool)
    }

    /// A string; `Ok(None)` when absent.
    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "a string", Value::as_str)
    }

    /// An array; `Ok(None)` when absent.
    pub fn get_array_opt(&self, key: &str) -> Result<Option<&Array>, GgufError> {
        self.typed(key, "an array", Value::as_array)
    }

    /// An integer of any type that fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.required(key, self.get_u32_opt(key))
    }

    /// An integer of any type that fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.required(key, self.get_u64_opt(key))
    }

    /// An integer of any type that fits in `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        self.required(key, self.get_usize_opt(key))
    }

    /// An `f32` (or an `f64`, rounded).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.required(key, self.get_f32_opt(key))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.required(key, self.get_bool_opt(key))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.required(key, self.get_str_opt(key))
    }

    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        self.required(key, self.get_array_opt(key))
    }

    /// `general.architecture`, e.g. `llama` or `mamba`; the prefix of the model's own keys.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.parsed.tensors
    }

    /// Bytes of weights one generated token reads: every tensor, except that a token
    /// embedding that is not also the output projection gives one row, and routed experts
    /// (`*_exps`) count `expert_used_count / expert_count` of their bytes. The numerator of the
    /// bandwidth roofline of decode.
    pub fn bytes_per_token(&self) -> usize {
        let arch = self.architecture().unwrap_or_default();
        let key = |k: &str| self.get_usize_opt(&format!("{arch}.{k}")).ok().flatten();
        let (used, count) = (key("expert_used_count"), key("expert_count"));
        let tied = self.tensor("output.weight").is_none();
        self.tensors()
            .iter()
            .map(|t| match (used, count) {
                _ if t.name == "token_embd.weight" && !tied => {
                    t.bytes / t.dims().first().copied().unwrap_or(1).max(1)
                }
                (Some(u), Some(c)) if t.name.contains("_exps") && c > 0 => t.bytes * u.min(c) / c,
                _ => t.bytes,
            })
            .sum()
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.parsed.tensor_index.get(name)?;
        self.parsed.tensors.get(i)
    }

    /// The tensor called `name`, or an error naming it and the file.
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name)
            .ok_or_else(|| self.err(GgufErrorKind::MissingTensor(name.to_owned())))
    }

    /// A tensor's data as bytes a backend may keep and read in place (see
    /// [`Backend::map_host`](weft_backends::Backend::map_host)); `None` where its range is
    /// outside the file.
    pub fn tensor_host(&self, info: &TensorInfo) -> Option<HostBytes> {
        let start = usize::try_from(info.offset).ok()?;
        HostBytes::new(self.storage.clone(), start..start.checked_add(info.bytes)?)
    }

    /// The data of a tensor of this file: exactly `info.bytes` bytes, borrowed from the file.
    ///
    /// An info from another file whose range does not lie within this one gives an empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = usize::try_from(info.offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(info.bytes)?));
        range.and_then(|r| self.bytes().get(r)).unwrap_or_default()
    }
}
