//! Graph dumps: Graphviz DOT and JSON (what `weft graph` prints and the viewer exports).

use crate::graph::Graph;
use crate::op::Op;
use crate::plan::Plan;
use std::fmt::Write;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// Colour of an op family in DOT output.
fn colour(op: &Op) -> &'static str {
    match op {
        Op::Input { .. } => "#dddddd",
        Op::External { .. } => "#bcd4e6",
        Op::View | Op::Contiguous => "#eeeeee",
        Op::MatMul | Op::MatMulCat | Op::MatMulId | Op::GetRows => "#f4b183",
        Op::Attention { .. } | Op::SoftMax { .. } | Op::Rope(_) => "#a9d18e",
        Op::SsmConv | Op::SsmScan { .. } | Op::GatedDeltaNet { .. } => "#c5a3d9",
        Op::Fused(_) | Op::Epilogue(_) => "#ffe699",
        Op::StoreRows => "#ff9999",
        _ => "#ffffff",
    }
}

fn detail(op: &Op) -> String {
    op.describe()
}

/// Graphviz DOT; with a plan, scheduled nodes show their arena slot.
pub fn to_dot(g: &Graph, plan: Option<&Plan>) -> String {
    let mut s = String::from(
        "digraph weft {\n  rankdir=TB;\n  node [shape=box, style=filled, fontname=monospace, fontsize=10];\n",
    );
    for id in g.ids() {
        let n = g.node(id);
        let mut label = format!(
            "{}\\n{} {} {}",
            esc(&n.name),
            esc(&detail(&n.op)),
            n.shape(),
            n.dtype
        );
        if let Some(slot) = plan.and_then(|p| p.slots.get(id.index()).copied().flatten()) {
            let _ = write!(label, "\\n@{} ({} B)", slot.offset, slot.bytes);
        }
        let _ = writeln!(
            s,
            "  n{} [label=\"{label}\", fillcolor=\"{}\"];",
            id.0,
            colour(&n.op)
        );
        for src in &n.srcs {
            let _ = writeln!(s, "  n{} -> n{};", src.0, id.0);
        }
    }
    for (name, id) in &g.outputs {
        let _ = writeln!(
            s,
            "  out_{0} [label=\"{1}\", shape=ellipse];\n  n{0} -> out_{0};",
            id.0,
            esc(name)
        );
    }
    s.push_str("}\n");
    s
}

/// JSON: every node (id, name, op, detail, shape, dtype, sources, and with a plan its arena
/// slot and live range), the outputs, and a summary with dispatch and arena figures.
pub fn to_json(g: &Graph, plan: Option<&Plan>) -> String {
    let mut s = String::from("{\n  \"nodes\": [\n");
    for (k, id) in g.ids().enumerate() {
        let n = g.node(id);
        let srcs: Vec<String> = n.srcs.iter().map(|x| x.0.to_string()).collect();
        let dims: Vec<String> = n.shape().dims().iter().map(|d| d.to_string()).collect();
        let _ = write!(
            s,
            "    {{\"id\": {}, \"name\": \"{}\", \"op\": \"{}\", \"detail\": \"{}\", \"shape\": [{}], \"dtype\": \"{}\", \"srcs\": [{}]",
            id.0,
            esc(&n.name),
            n.op.name(),
            esc(&detail(&n.op)),
            dims.join(", "),
            n.dtype,
            srcs.join(", ")
        );
        if let Some(p) = plan {
            if let Some(slot) = p.slots.get(id.index()).copied().flatten() {
                let _ = write!(
                    s,
                    ", \"arena_offset\": {}, \"bytes\": {}",
                    slot.offset, slot.bytes
                );
            }
            if let Some((a, b)) = p.live.get(id.index()).copied().flatten() {
                let _ = write!(s, ", \"live\": [{a}, {b}]");
            }
        }
        s.push('}');
        s.push_str(if k + 1 < g.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ],\n  \"outputs\": [");
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|(n, id)| format!("{{\"name\": \"{}\", \"node\": {}}}", esc(n), id.0))
        .collect();
    s.push_str(&outs.join(", "));
    s.push_str("],\n  \"summary\": {");
    let _ = write!(s, "\"nodes\": {}", g.len());
    if let Some(p) = plan {
        let _ = write!(
            s,
            ", \"dispatches\": {}, \"arena_bytes\": {}, \"naive_bytes\": {}",
            p.dispatches(),
            p.arena_bytes,
            p.naive_bytes
        );
    }
    s.push_str("}\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, GraphBuilder, PlanOptions, plan};

    #[test]
    fn dumps_name_every_node_and_escape_strings() {
        let mut b = GraphBuilder::new();
        let x = b.input("x \"quoted\"", &[2, 3], DType::F32).expect("input");
        let y = b.silu(x).expect("silu");
        b.output(y, "y").expect("output");
        let g = b.finish();
        let p = plan(&g, PlanOptions::default());
        let dot = to_dot(&p.graph, Some(&p));
        assert!(dot.contains("x \\\"quoted\\\"") && dot.contains("n0 -> n1"));
        let json = to_json(&p.graph, Some(&p));
        assert!(json.contains("\"op\": \"silu\"") && json.contains("\"dispatches\": 1"));
    }
}
