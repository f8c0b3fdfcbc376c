use weft_graph::GraphError;

/// What went wrong in a backend. Every variant names the buffer, input, node or op at fault.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("unknown buffer #{0}")]
    UnknownBuffer(u32),
    #[error("buffer #{0} is read-only: it maps host bytes (a model file's weights) in place")]
    ReadOnlyBuffer(u32),
    #[error("unknown program #{0}")]
    UnknownProgram(u32),
    #[error("buffer #{buffer}: bytes {start}..{end} are outside its {size} bytes")]
    OutOfBounds {
        buffer: u32,
        start: usize,
        end: usize,
        size: usize,
    },
    #[error("external {name:?} needs {need} bytes but buffer #{buffer} has {have}")]
    ExternalTooSmall {
        name: String,
        buffer: u32,
        need: usize,
        have: usize,
    },
    #[error("input {0:?} was not given")]
    MissingInput(String),
    #[error("input {name:?}: {detail}")]
    BadInput { name: String, detail: String },
    #[error("{op} ({node}): index {index} is outside 0..{len}")]
    IndexOutOfRange {
        op: &'static str,
        node: String,
        index: i64,
        len: usize,
    },
    #[error("{op} ({node}) is not supported by the {backend} backend: {detail}")]
    Unsupported {
        backend: &'static str,
        op: &'static str,
        node: String,
        detail: String,
    },
    #[error("out of device memory allocating {bytes} bytes: {detail}")]
    OutOfMemory { bytes: usize, detail: String },
    #[error("device error: {0}")]
    Device(String),
    #[error("{0}")]
    NoAdapter(String),
    #[error("{what} needs {bytes} bytes but {adapter} allows at most {limit} per binding")]
    TooLarge {
        what: String,
        bytes: usize,
        limit: usize,
        adapter: String,
    },
    #[error("kernel {kernel} failed to compile: {message}")]
    Shader {
        kernel: &'static str,
        message: String,
    },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;
