//! Bad graph construction returns typed errors that name the op; nothing panics.

#![allow(clippy::unwrap_used)]

use weft_graph::{
    Access, BufferId, DType, DeltaForm, GraphBuilder, GraphError, RopeMode, RopeParams,
};

fn op_of(e: GraphError) -> &'static str {
    match e {
        GraphError::Shape { op, .. }
        | GraphError::DType { op, .. }
        | GraphError::Argument { op, .. } => op,
        GraphError::UnknownTensor(_) => "unknown",
    }
}

#[test]
fn mismatched_shapes_and_dtypes_are_errors() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 8], DType::F32).unwrap();
    let y = b.input("y", &[4, 8], DType::F32).unwrap();
    let ids = b.input("ids", &[3], DType::I32).unwrap();
    let w = b.weight("w", &[16, 7], DType::F32, BufferId(0)).unwrap();
    assert_eq!(op_of(b.add(x, y).unwrap_err()), "add");
    assert_eq!(op_of(b.matmul(x, w).unwrap_err()), "mul_mat");
    assert_eq!(op_of(b.add(x, ids).unwrap_err()), "add");
    assert_eq!(op_of(b.get_rows(w, x).unwrap_err()), "get_rows");
    assert_eq!(op_of(b.concat(x, ids, 1).unwrap_err()), "concat");
    assert_eq!(op_of(b.concat(x, y, 1).unwrap_err()), "concat");
    assert_eq!(op_of(b.reshape(x, &[5, 5]).unwrap_err()), "reshape");
    assert_eq!(op_of(b.permute(x, &[0, 0]).unwrap_err()), "permute");
    assert_eq!(op_of(b.slice(x, 0, 2, 2).unwrap_err()), "slice");
    assert_eq!(op_of(b.view(x, &[4, 8], &[8, 1], 0).unwrap_err()), "view");
    assert_eq!(op_of(b.top_k(x, 9).unwrap_err()), "top_k");
    assert_eq!(
        op_of(b.input("q", &[1, 2, 3, 4, 5], DType::F32).unwrap_err()),
        "input"
    );
    assert_eq!(op_of(b.input("q", &[4], DType::F16).unwrap_err()), "input");
    let x3 = b.reshape(x, &[3, 2, 4]).unwrap();
    let pos = b.input("pos", &[3], DType::I32).unwrap();
    let p = RopeParams {
        n_dims: 6,
        mode: RopeMode::Neox,
        freq_base: 1e4,
        freq_scale: 1.0,
    };
    assert_eq!(op_of(b.rope(x3, pos, p).unwrap_err()), "rope");
    assert_eq!(
        op_of(b.rope(x3, ids, RopeParams { n_dims: 3, ..p }).unwrap_err()),
        "rope"
    );
    assert_eq!(
        op_of(b.rope(x3, x, RopeParams { n_dims: 4, ..p }).unwrap_err()),
        "rope"
    );
    // attention: head counts that do not group, and a causal query longer than the keys
    let k = b.reshape(y, &[4, 2, 4]).unwrap();
    let q3 = b.input("q3", &[5, 3, 4], DType::F32).unwrap();
    assert_eq!(
        op_of(b.attention(q3, k, k, None, None, 1.0, false).unwrap_err()),
        "attention"
    );
    let q5 = b.input("q5", &[5, 2, 4], DType::F32).unwrap();
    assert_eq!(
        op_of(b.attention(q5, k, k, None, None, 1.0, true).unwrap_err()),
        "attention"
    );
}

#[test]
fn quantized_and_cache_rules_are_enforced() {
    let mut b = GraphBuilder::new();
    assert_eq!(
        op_of(
            b.weight("q", &[4, 40], DType::Q8_0, BufferId(0))
                .unwrap_err()
        ),
        "external"
    );
    let q = b
        .weight("q", &[4, 64], DType::Q4K.min(DType::Q8_0), BufferId(0))
        .unwrap();
    assert_eq!(op_of(b.permute(q, &[1, 0]).unwrap_err()), "permute");
    assert_eq!(op_of(b.slice(q, 1, 0, 32).unwrap_err()), "slice");
    let x = b.input("x", &[2, 64], DType::F32).unwrap();
    let idx = b.input("idx", &[2], DType::I32).unwrap();
    let ro = b.weight("ro", &[8, 64], DType::F32, BufferId(1)).unwrap();
    assert_eq!(op_of(b.store_rows(ro, x, idx).unwrap_err()), "store_rows");
    let rw = b
        .external("rw", &[8, 64], DType::F16, BufferId(2), Access::ReadWrite)
        .unwrap();
    assert!(b.store_rows(rw, x, idx).is_ok());
    assert_eq!(op_of(b.contiguous(q).unwrap_err()), "contiguous");
    assert_eq!(op_of(b.output(q, "q").unwrap_err()), "output");
}

#[test]
fn recurrent_ops_check_every_operand() {
    let mut b = GraphBuilder::new();
    let f = |b: &mut GraphBuilder, n: &str, d: &[usize]| b.input(n, d, DType::F32).unwrap();
    let st = f(&mut b, "st", &[2, 4, 1, 8]);
    let x = f(&mut b, "x", &[2, 3, 4, 1]);
    let dt = f(&mut b, "dt", &[2, 3, 4]);
    let a = f(&mut b, "a", &[4, 8]);
    let bb = f(&mut b, "b", &[2, 3, 1, 8]);
    assert!(b.ssm_scan(st, x, dt, a, bb, bb).is_ok());
    let bad_dt = f(&mut b, "dt2", &[2, 2, 4]);
    assert_eq!(
        op_of(b.ssm_scan(st, x, bad_dt, a, bb, bb).unwrap_err()),
        "ssm_scan"
    );
    let w = f(&mut b, "w", &[4, 4]);
    let xc = f(&mut b, "xc", &[2, 2, 4]);
    assert_eq!(op_of(b.ssm_conv_raw(xc, w).unwrap_err()), "ssm_conv");
    let s = f(&mut b, "s", &[1, 2, 4, 8]);
    let q = f(&mut b, "q", &[1, 3, 2, 8]);
    let v = f(&mut b, "v", &[1, 3, 2, 4]);
    let g = f(&mut b, "g", &[1, 3, 2]);
    assert!(
        b.gated_delta_net(s, q, q, v, g, g, DeltaForm::Recurrent)
            .is_ok()
    );
    assert_eq!(
        op_of(
            b.gated_delta_net(s, q, q, q, g, g, DeltaForm::Recurrent)
                .unwrap_err()
        ),
        "gated_delta_net"
    );
}

#[test]
fn a_tensor_from_another_graph_is_rejected() {
    let mut a = GraphBuilder::new();
    let mut b = GraphBuilder::new();
    let x = a.input("x", &[2, 2], DType::F32).unwrap();
    let _ = a.input("y", &[3], DType::F32).unwrap();
    let y = a.input("z", &[3], DType::F32).unwrap();
    let _ = b.input("x", &[2, 2], DType::F32).unwrap();
    assert!(matches!(
        b.silu(y).unwrap_err(),
        GraphError::UnknownTensor(2)
    ));
    assert!(b.silu(x).is_ok());
}
