use crate::gguf::GgufError;
use crate::npy::NpyError;
use weft_backends::BackendError;
use weft_graph::GraphError;

/// What went wrong on the model side. Every variant names the file, key or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("{file}: tensor {name:?} is missing")]
    MissingWeight {
        name: String,
        file: std::path::PathBuf,
    },
    #[error("{file}: tensor {name:?} has shape {got:?}, expected {want:?}")]
    WrongShape {
        name: String,
        file: std::path::PathBuf,
        want: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{file}: unknown architecture {arch:?} (supported: {supported})")]
    UnknownArchitecture {
        arch: String,
        file: std::path::PathBuf,
        supported: String,
    },
    #[error(
        "the context is full: {need} new tokens, {free} free cells of {cells}; start a session with a larger context"
    )]
    ContextFull {
        need: usize,
        free: usize,
        cells: usize,
    },
    #[error("sequence {seq} is outside this session's {capacity} sequences")]
    UnknownSequence { seq: usize, capacity: usize },
    #[error("no free state slot for sequence {seq} (all {slots} are in use)")]
    NoFreeSlot { seq: usize, slots: usize },
    #[error("token id {token} is outside the vocabulary of {n_vocab}")]
    UnknownToken { token: i64, n_vocab: usize },
    #[error("sequence {0} has no tokens")]
    EmptySequence(usize),
    #[error("{0}")]
    Config(String),
    #[error("cannot load the state: {0}")]
    BadState(String),
    #[error("{file}: tokenizer: {detail}")]
    Tokenizer {
        file: std::path::PathBuf,
        detail: String,
    },
    #[error("cannot remove positions {p0}..{} of sequence {seq} ({len} tokens): {detail}", p1.map_or("end".to_string(), |p| p.to_string()))]
    RecurrentTrim {
        seq: usize,
        p0: usize,
        p1: Option<usize>,
        len: usize,
        detail: String,
    },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
