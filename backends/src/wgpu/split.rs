//! Weights larger than one storage binding: a matmul or row gather over such a weight runs as
//! several dispatches, each binding a range of the weight's rows. A 32000 × 2048 f16 LM head
//! (125 MiB) does not fit the 128 MiB bindings of some drivers, for one.

use super::lower::{Lowered, matmul_groups};
use weft_graph::{Graph, NodeId, Op};

/// One dispatch of a node: its parameters, workgroups, and for a split weight the byte range of
/// external binding `.0` it binds.
#[derive(Debug)]
pub struct Part {
    pub params: Vec<u32>,
    pub groups: u32,
    pub range: Option<(usize, u64, u64)>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The dispatches of `low` (node `id`) given the byte size of each external it binds, the
/// largest storage binding `max` and the binding offset alignment `align`. Err says why a binding
/// over `max` cannot be split.
pub fn parts(
    g: &Graph,
    id: NodeId,
    low: &Lowered,
    sizes: &[u64],
    max: u64,
    align: u64,
) -> Result<Vec<Part>, String> {
    let over: Vec<usize> = (0..sizes.len()).filter(|&b| sizes[b] > max).collect();
    if over.is_empty() {
        return Ok(vec![Part {
            params: low.params.clone(),
            groups: low.groups,
            range: None,
        }]);
    }
    let node = g.node(id);
    // (the weight's source index, the params holding its row count and its element offset)
    let op = node.op.core(node.srcs.len()).0;
    let (src, rows_at, off_at) = match op {
        Op::MatMul => (1, 1, 4),
        Op::GetRows => (0, 2, 4),
        _ => return Err(format!("{} reads it whole", node.op.name())),
    };
    let w = g.node(node.srcs[src]);
    let Op::External { buffer, .. } = g.node(g.storage_of(node.srcs[src])).op else {
        return Err("it is not the node's weight".into());
    };
    let b = low.externals.iter().position(|x| *x == buffer);
    if over.len() != 1 || b != Some(over[0]) {
        return Err("it is not the node's weight".into());
    }
    if w.shape().rank() != 2 || !w.layout.is_contiguous() {
        return Err("only dense 2-D weights are split by rows".into());
    }
    let (rows, k) = (w.shape().dims()[0] as u64, w.shape().dims()[1]);
    let row_bytes = w.dtype.bytes_for(k).unwrap_or(0) as u64;
    let start = w
        .dtype
        .bytes_for(low.params[off_at] as usize)
        .map(|s| s as u64);
    let Some(start) = start.filter(|s| s % align == 0 && row_bytes > 0) else {
        return Err("the weight does not start on a binding boundary".into());
    };
    let step = align / gcd(row_bytes, align);
    let per_part = (max / row_bytes) / step * step;
    if per_part == 0 {
        return Err("one row is larger than a binding".into());
    }
    let mut parts = vec![];
    let mut r0 = 0;
    while r0 < rows {
        let r = per_part.min(rows - r0);
        let offset = start + r0 * row_bytes;
        let bytes = (r * row_bytes).div_ceil(4) * 4;
        let mut p = low.params.clone();
        p[off_at] = 0;
        let groups = match op {
            Op::MatMul => {
                p[rows_at] = r as u32;
                // units (outputs, or row blocks × N), linear in N
                p[9] = (low.params[9] as u64 / rows * r) as u32;
                p[11] = r0 as u32;
                matmul_groups(&p)
            }
            _ => {
                p[7] = r0 as u32;
                p[8] = r as u32;
                low.groups
            }
        };
        parts.push(Part {
            params: p,
            groups,
            range: Some((over[0], offset, bytes.min(sizes[over[0]] - offset))),
        });
        r0 += r;
    }
    Ok(parts)
}
