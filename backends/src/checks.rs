//! Checks every backend makes the same way: externals bound to large enough buffers, and host
//! inputs that match the graph's inputs.

use crate::{BackendError, HostData, Result};
use weft_graph::{BufferId, NodeId, Op, Plan};

/// Each external of the plan with the bytes its layout needs; errors when a buffer is smaller.
/// `size` gives a buffer's size (or an error for an unknown buffer).
pub(crate) fn check_externals(
    plan: &Plan,
    mut size: impl FnMut(BufferId) -> Result<usize>,
) -> Result<Vec<(String, usize)>> {
    let g = &plan.graph;
    let mut out = vec![];
    for id in g.ids() {
        let n = g.node(id);
        if let Op::External { name, buffer, .. } = &n.op {
            let need = n.dtype.bytes_for(n.layout.extent()).unwrap_or(usize::MAX);
            let have = size(*buffer)?;
            if need > have {
                return Err(BackendError::ExternalTooSmall {
                    name: name.clone(),
                    buffer: buffer.0,
                    need,
                    have,
                });
            }
            out.push((name.clone(), have));
        }
    }
    Ok(out)
}

/// The host data of every graph input with the byte offset of its arena slot, checking names,
/// dtypes and lengths.
pub(crate) fn inputs<'a>(
    plan: &Plan,
    given: &[(&str, HostData<'a>)],
) -> Result<Vec<(NodeId, usize, HostData<'a>)>> {
    let g = &plan.graph;
    let mut out = vec![];
    for id in g.inputs() {
        let n = g.node(id);
        let Op::Input { name } = &n.op else { continue };
        let data = given
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, d)| *d)
            .ok_or_else(|| BackendError::MissingInput(name.clone()))?;
        if data.dtype() != n.dtype || data.len() != n.numel() {
            return Err(BackendError::BadInput {
                name: name.clone(),
                detail: format!(
                    "expected {} {} values for shape {}, got {} {}",
                    n.numel(),
                    n.dtype,
                    n.shape(),
                    data.len(),
                    data.dtype()
                ),
            });
        }
        out.push((id, plan.slots[id.index()].map_or(0, |s| s.offset), data));
    }
    Ok(out)
}
