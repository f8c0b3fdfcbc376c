use crate::dtype::DType;

/// What went wrong while building or planning a graph. Every variant names the op at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op}: {what} must be {expected}, got {got}")]
    DType {
        op: &'static str,
        what: &'static str,
        expected: &'static str,
        got: DType,
    },
    #[error("{op}: {detail}")]
    Argument { op: &'static str, detail: String },
    #[error("tensor #{0} does not belong to this graph")]
    UnknownTensor(u32),
}

pub type Result<T, E = GraphError> = std::result::Result<T, E>;

pub(crate) fn shape_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(GraphError::Shape {
        op,
        detail: detail.into(),
    })
}

pub(crate) fn arg_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(GraphError::Argument {
        op,
        detail: detail.into(),
    })
}
