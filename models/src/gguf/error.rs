//! Errors of the GGUF reader. Every message names the file, and the key or tensor at fault.

use std::fmt;
use std::path::PathBuf;

/// A GGUF file could not be read or does not hold what was asked for.
///
/// Displays as `FILE: what went wrong`; [`GgufError::kind`] tells the cases apart.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", file.display())]
pub struct GgufError {
    file: PathBuf,
    kind: GgufErrorKind,
}

impl GgufError {
    pub(crate) fn new(file: impl Into<PathBuf>, kind: GgufErrorKind) -> GgufError {
        GgufError {
            file: file.into(),
            kind,
        }
    }

    /// The file at fault (`<memory>` for bytes parsed without a name).
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// What went wrong.
    pub fn kind(&self) -> &GgufErrorKind {
        &self.kind
    }
}

/// Where in the file the parser was when it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Section {
    /// Magic, version and the two counts.
    Header,
    /// The key of the metadata entry with this index.
    Key(u64),
    /// The value of this metadata key.
    Value(String),
    /// The name of the tensor info with this index.
    TensorName(u64),
    /// The rest of this tensor's info (dimensions, type, offset).
    TensorInfo(String),
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Section::Header => f.write_str("the header"),
            Section::Key(i) => write!(f, "the key of metadata entry #{i}"),
            Section::Value(k) => write!(f, "the value of key {k:?}"),
            Section::TensorName(i) => write!(f, "the name of tensor #{i}"),
            Section::TensorInfo(n) => write!(f, "the info of tensor {n:?}"),
        }
    }
}

/// The cases of [`GgufError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufErrorKind {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("unsupported GGUF version {0} (weft reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("truncated in {section}: {needed} bytes needed at offset {offset}, the file has {len}")]
    Truncated {
        section: Section,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{what} {count} in {section} is larger than the {remaining} bytes left could hold")]
    CountTooLarge {
        section: Section,
        what: &'static str,
        count: u64,
        remaining: u64,
    },
    #[error("string in {section} is not valid UTF-8")]
    NotUtf8 { section: Section },
    #[error("key {key:?} has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("key {key:?} nests arrays deeper than {max} levels")]
    NestingTooDeep { key: String, max: usize },
    #[error("key {key:?} appears twice")]
    DuplicateKey { key: String },
    #[error("general.alignment is {0}, which is not a power of two")]
    BadAlignment(u64),
    #[error("tensor {name:?} appears twice")]
    DuplicateTensor { name: String },
    #[error("tensor {tensor:?} has {n_dims} dimensions (1 to 4 allowed)")]
    BadDimCount { tensor: String, n_dims: u32 },
    #[error("tensor {tensor:?} has dimensions {dims:?} (GGUF order) whose size overflows")]
    SizeOverflow { tensor: String, dims: Vec<u64> },
    #[error("tensor {tensor:?} has unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?} has type {type_name}, which weft does not support")]
    UnsupportedTensorType {
        tensor: String,
        type_name: &'static str,
    },
    #[error(
        "tensor {tensor:?} has rows of {row} elements, not a whole number of {dtype} blocks ({block})"
    )]
    RowNotBlockMultiple {
        tensor: String,
        dtype: weft_graph::DType,
        row: u64,
        block: usize,
    },
    #[error(
        "tensor {tensor:?} has data offset {offset}, not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {tensor:?} occupies bytes {start}..{end}, past the end of the file ({len} bytes)"
    )]
    DataOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap")]
    OverlappingTensors { first: String, second: String },
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("metadata key {key:?} holds {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
}
