//! The [`Backend`] trait and its implementations.
//!
//! A backend owns buffers (weights and caches, bound to graph externals by [`BufferId`]),
//! compiles a [`Plan`] into a program (allocating the plan's activation arena), and runs it on
//! host inputs, returning the graph's outputs. The CPU backend is both the fallback and the
//! readable reference for every op.

mod checks;
pub mod cpu;
mod error;
mod host;
mod null;
pub mod wgpu;

pub use cpu::CpuBackend;
pub use error::{BackendError, Result};
pub use host::{HostBytes, HostData, Output, OutputData};
pub use null::NullBackend;
pub use wgpu::{WgpuBackend, WgpuOptions};

/// Whether environment variable `name` is set to anything but empty, `0` or `false` (how weft
/// reads its switches: `WEFT_COOP`, `WEFT_UNCHECKED`, `CI` in the tests, …).
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

use std::time::Duration;
use weft_graph::{BufferId, NodeId, Plan};

/// Handle of a compiled program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProgramId(pub u32);

/// Time spent in one node during the last run.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTiming {
    pub node: NodeId,
    pub name: String,
    pub op: &'static str,
    pub time: Duration,
}

/// Where the host's time went over a backend's runs so far (totals; subtract two readings for
/// an interval). Only backends that queue work on a device keep them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunStats {
    /// Runs counted.
    pub runs: u64,
    /// Recording command buffers before submitting them (a run whose commands were recorded
    /// during the previous run, see [`WgpuBackend`], adds nothing here).
    pub encode: Duration,
    /// Recording the next run's commands while the device works on this one.
    pub encode_ahead: Duration,
    /// Runs whose commands were recorded ahead of time.
    pub reused: u64,
    /// Handing command buffers to the device queue.
    pub submit: Duration,
    /// Waiting for the device to finish and reading the outputs back.
    pub wait: Duration,
}

impl RunStats {
    /// What was counted after `earlier` (a reading of the same backend).
    pub fn since(&self, earlier: &RunStats) -> RunStats {
        RunStats {
            runs: self.runs.saturating_sub(earlier.runs),
            encode: self.encode.saturating_sub(earlier.encode),
            encode_ahead: self.encode_ahead.saturating_sub(earlier.encode_ahead),
            reused: self.reused.saturating_sub(earlier.reused),
            submit: self.submit.saturating_sub(earlier.submit),
            wait: self.wait.saturating_sub(earlier.wait),
        }
    }
}

impl std::ops::AddAssign for RunStats {
    fn add_assign(&mut self, o: RunStats) {
        self.runs += o.runs;
        self.encode += o.encode;
        self.encode_ahead += o.encode_ahead;
        self.reused += o.reused;
        self.submit += o.submit;
        self.wait += o.wait;
    }
}

/// An executor of planned graphs. Object safe, so a caller can hold `Box<dyn Backend>`.
pub trait Backend: std::fmt::Debug {
    /// Human-readable name, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;

    /// A zero-filled buffer of `bytes`.
    fn alloc(&mut self, bytes: usize) -> Result<BufferId>;

    /// Copies `data` into `buf` at byte `offset`.
    fn upload(&mut self, buf: BufferId, offset: usize, data: &[u8]) -> Result<()>;

    /// A read-only buffer that is `bytes` itself, read in place, where the backend computes
    /// from host memory (the CPU backend: weights straight from the mapped model file, neither
    /// copied nor held twice); `None` where it cannot (a GPU, or bytes its kernels cannot view
    /// in place), and the caller allocates and uploads instead. Writing to the buffer is an
    /// error ([`BackendError::ReadOnlyBuffer`]).
    fn map_host(&mut self, bytes: HostBytes) -> Result<Option<BufferId>> {
        let _ = bytes;
        Ok(None)
    }

    /// Copies `out.len()` bytes of `buf` from byte `offset` into `out`.
    fn download(&mut self, buf: BufferId, offset: usize, out: &mut [u8]) -> Result<()>;

    /// Size of a buffer in bytes.
    fn buffer_size(&self, buf: BufferId) -> Result<usize>;

    /// Releases a buffer.
    fn free(&mut self, buf: BufferId) -> Result<()>;

    /// The graph passes this backend's plans should run (what a caller puts in its
    /// `PlanOptions`): the default set, unless some fusion costs this backend more than it
    /// saves.
    fn pass_options(&self) -> weft_graph::passes::PassOptions {
        weft_graph::passes::PassOptions::default()
    }

    /// Prepares a plan to run; checks that its externals are bound to large enough buffers.
    fn compile(&mut self, plan: &Plan) -> Result<ProgramId>;

    /// Runs a program on host inputs (by input name) and returns its outputs in the order the
    /// graph lists them.
    fn run(&mut self, program: ProgramId, inputs: &[(&str, HostData<'_>)]) -> Result<Vec<Output>>;

    /// Drops a compiled program and its arena.
    fn release(&mut self, program: ProgramId) -> Result<()>;

    /// Turns per-node timing on or off for later runs.
    fn set_profiling(&mut self, on: bool);

    /// Per-node times of the last run of `program`, when profiling was on.
    fn timings(&self, program: ProgramId) -> Option<Vec<NodeTiming>>;

    /// Measured memory bandwidth in bytes/s, decode's roofline: the best of a few passes over
    /// `bytes` bytes, counting every byte moved. What a pass is differs: see
    /// [`Backend::bandwidth_method`].
    fn memory_bandwidth(&mut self, bytes: usize) -> Result<f64>;

    /// How [`Backend::memory_bandwidth`] measures, in words for a report.
    fn bandwidth_method(&self) -> &'static str;

    /// The bytes [`Backend::memory_bandwidth`] passes over when asked for `bytes` (a GPU's
    /// copy stays within one storage binding).
    fn bandwidth_bytes(&self, bytes: usize) -> usize {
        bytes
    }

    /// Host time spent around the device in runs so far, where the backend keeps it.
    fn run_stats(&self) -> Option<RunStats> {
        None
    }
}
