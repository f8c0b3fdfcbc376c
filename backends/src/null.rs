//! A backend that computes nothing: it records buffer sizes and checks plans, so graphs,
//! fusion and the planner can be inspected (`weft info`, `weft graph`) or tested without
//! memory or compute. Runs return zeros of the right shapes.

use crate::{Backend, BackendError, HostData, NodeTiming, Output, OutputData, ProgramId, Result};
use std::collections::HashMap;
use weft_graph::{BufferId, DType, Plan};

/// Records buffers and plans; computes nothing.
#[derive(Debug, Default)]
pub struct NullBackend {
    sizes: HashMap<u32, usize>,
    next: u32,
    programs: HashMap<u32, Plan>,
    next_program: u32,
}

impl NullBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of every live buffer.
    pub fn allocated(&self) -> usize {
        self.sizes.values().sum()
    }

    fn size(&self, buf: BufferId) -> Result<usize> {
        self.sizes
            .get(&buf.0)
            .copied()
            .ok_or(BackendError::UnknownBuffer(buf.0))
    }

    fn bounds(&self, buf: BufferId, offset: usize, len: usize) -> Result<()> {
        let size = self.size(buf)?;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(BackendError::OutOfBounds {
                buffer: buf.0,
                start: offset,
                end: offset.saturating_add(len),
                size,
            }),
        }
    }
}

impl Backend for NullBackend {
    fn name(&self) -> String {
        "null (no compute)".into()
    }

    fn alloc(&mut self, bytes: usize) -> Result<BufferId> {
        self.next += 1;
        self.sizes.insert(self.next, bytes);
        Ok(BufferId(self.next))
    }

    fn upload(&mut self, buf: BufferId, offset: usize, data: &[u8]) -> Result<()> {
        self.bounds(buf, offset, data.len())
    }

    fn download(&mut self, buf: BufferId, offset: usize, out: &mut [u8]) -> Result<()> {
        self.bounds(buf, offset, out.len())?;
        out.fill(0);
        Ok(())
    }

    fn buffer_size(&self, buf: BufferId) -> Result<usize> {
        self.size(buf)
    }

    fn free(&mut self, buf: BufferId) -> Result<()> {
        self.sizes
            .remove(&buf.0)
            .map(|_| ())
            .ok_or(BackendError::UnknownBuffer(buf.0))
    }

    fn compile(&mut self, plan: &Plan) -> Result<ProgramId> {
        crate::checks::check_externals(plan, |b| self.size(b))?;
        self.next_program += 1;
        self.programs.insert(self.next_program, plan.clone());
        Ok(ProgramId(self.next_program))
    }

    fn run(&mut self, program: ProgramId, inputs: &[(&str, HostData<'_>)]) -> Result<Vec<Output>> {
        let plan = self
            .programs
            .get(&program.0)
            .ok_or(BackendError::UnknownProgram(program.0))?;
        crate::checks::inputs(plan, inputs)?;
        let g = &plan.graph;
        Ok(g.outputs
            .iter()
            .map(|(name, id)| {
                let n = g.node(*id);
                let data = match n.dtype {
                    DType::I32 => OutputData::I32(vec![0; n.numel()]),
                    _ => OutputData::F32(vec![0.0; n.numel()]),
                };
                Output {
                    name: name.clone(),
                    shape: n.shape(),
                    data,
                }
            })
            .collect())
    }

    fn release(&mut self, program: ProgramId) -> Result<()> {
        self.programs
            .remove(&program.0)
            .map(|_| ())
            .ok_or(BackendError::UnknownProgram(program.0))
    }

    fn set_profiling(&mut self, _on: bool) {}

    fn timings(&self, _program: ProgramId) -> Option<Vec<NodeTiming>> {
        None
    }

    fn bandwidth_method(&self) -> &'static str {
        "none"
    }

    fn memory_bandwidth(&mut self, _bytes: usize) -> Result<f64> {
        Err(BackendError::Unsupported {
            backend: "null",
            op: "memory_bandwidth",
            node: String::new(),
            detail: "the null backend moves no memory".into(),
        })
    }
}
