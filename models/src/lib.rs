//! The model side of weft: shared layer blocks that every architecture file composes
//! (attention with its KV cache, dense FFN, the Mamba mixer and the recurrent-state base), and
//! tiny random-weight demo stacks; the GGUF reader, the architecture registry, hybrid memory
//! and the `Session` that decodes batches of sequences.

pub mod arch;
pub mod blocks;
pub mod demo;
mod error;
pub mod gguf;
pub mod memory;
pub mod npy;
pub mod sampling;
pub mod session;
pub mod step;
pub mod tokenizer;
pub mod weights;

pub use error::{ModelError, Result};
pub use memory::{MemoryConfig, SeqId};
pub use session::Session;
