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
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
