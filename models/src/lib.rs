//! The model side of weft: shared layer blocks that every architecture file composes
//! (attention with its KV cache, dense FFN, the Mamba mixer and the recurrent-state base), and
//! tiny random-weight demo stacks.

pub mod blocks;
pub mod demo;
mod error;

pub use error::{ModelError, Result};
