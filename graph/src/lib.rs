//! weft's graph IR: a lazy [`GraphBuilder`], the [`Op`] set, passes (dead-node removal, view
//! folding, legalization, elementwise fusion) and the arena [`plan`]ner.
//!
//! Building records nodes and checks shapes and dtypes; nothing is computed until a backend
//! runs a [`Plan`].

pub mod builder;
pub mod dtype;
pub mod error;
pub mod export;
pub mod graph;
pub mod layout;
pub mod math;
pub mod op;
pub mod passes;
pub mod plan;
pub mod quant;
pub mod testing;

pub use builder::GraphBuilder;
pub use dtype::DType;
pub use error::{GraphError, Result};
pub use graph::{Graph, Node, NodeId, Tensor};
pub use layout::{Layout, Shape};
pub use op::{
    Access, BcNorm, BinaryOp, BufferId, DeltaForm, DeltaGates, Epilogue, FusedProgram, Instr,
    NormKind, Op, QkNorm, ReduceOp, RopeMode, RopeParams, ScanDt, UnaryOp, XNorm, XProgram,
};
pub use plan::{Plan, PlanOptions, Slot, plan};
