//! The op suite, written once and stamped for every backend by `op_suite!`. Each case runs a
//! graph under three plan settings (fused, unfused, no memory reuse), checks that they agree,
//! and compares the result with a plain f64 reference.

#![allow(clippy::unwrap_used)]

mod cases;
mod harness;
mod reference;

macro_rules! op_suite {
    ($backend:ident, $make:expr, [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $case() {
                    if let Some(mut be) = $make {
                        super::cases::$case(&mut *be);
                    }
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($backend:ident, $make:expr) => {
        op_suite!(
            $backend,
            $make,
            [
                unary,
                binary_broadcast,
                views_and_contiguous,
                contiguous_casts,
                matmul_float,
                matmul_q8_0,
                matmul_q4_0,
                matmul_q4_1,
                matmul_q5_0,
                matmul_q5_1,
                matmul_q4_k,
                matmul_q5_k,
                matmul_q6_k,
                matvec_long_rows,
                matmul_activations,
                matmul_residual,
                matmul_strided,
                matmul_cat,
                matmul_pair,
                norm_matvec,
                norm_moe,
                matvec_input,
                matmul_id,
                matmul_id_pair,
                get_rows,
                norms,
                norms_strided,
                sum_norm,
                softmax,
                softmax_gather,
                top_k_inline,
                rope,
                rope_pair,
                attention,
                attention_kv_store,
                concat,
                ssm_conv,
                ssm_conv_in_place,
                ssm_scan_mamba1,
                ssm_scan_mamba2,
                ssm_scan_in_place,
                ssm_scan_dt,
                ssm_scan_strided,
                epilogues,
                gated_delta_net_recurrent,
                gated_delta_net_chunked,
                gated_delta_net_in_place,
                gated_delta_net_gates,
                reductions_and_top_k,
                store_rows,
                random_graphs,
                fusion_cuts_dispatches,
                bad_inputs_are_errors,
            ]
        );
    };
}

all_cases!(
    cpu,
    Some(Box::new(weft_backends::CpuBackend::new()) as Box<dyn weft_backends::Backend>)
);

/// The GPU backend on the first adapter wgpu finds (lavapipe in CI). Without one the test is
/// skipped with a message, except under `CI`, where a missing adapter fails the test.
fn wgpu_backend(no_subgroups: bool) -> Option<Box<dyn weft_backends::Backend>> {
    let opts = weft_backends::WgpuOptions {
        no_subgroups,
        ..Default::default()
    };
    Some(Box::new(wgpu_with(&opts)?))
}

/// The GPU backend with `opts`, as [`wgpu_backend`] treats a missing adapter.
fn wgpu_with(opts: &weft_backends::WgpuOptions) -> Option<weft_backends::WgpuBackend> {
    match weft_backends::WgpuBackend::new(opts) {
        Ok(b) => Some(b),
        Err(e) if weft_backends::env_flag("CI") => {
            panic!("CI requires a GPU adapter for the wgpu tests: {e}")
        }
        Err(e) => {
            eprintln!("skipping wgpu test: {e}");
            None
        }
    }
}

all_cases!(wgpu, super::wgpu_backend(false));

/// The GPU backend opened with cooperative matrices, whose prompt matmuls then run
/// `matmul_coop`. Adapters without them (lavapipe among them) skip these cases with a message:
/// the kernel is still validated and written as SPIR-V by the shaders' tests.
fn wgpu_coop_backend() -> Option<Box<dyn weft_backends::Backend>> {
    let opts = weft_backends::WgpuOptions {
        cooperative_matrices: true,
        ..Default::default()
    };
    let be = wgpu_with(&opts)?;
    if !be.uses_cooperative_matrices() {
        eprintln!(
            "skipping matmul_coop: {} has no cooperative matrices (16x16 f16, 32-lane subgroups)",
            be.adapter_info().name
        );
        return None;
    }
    Some(Box::new(be))
}

op_suite!(
    wgpu_coop,
    super::wgpu_coop_backend(),
    [
        matmul_float,
        matmul_q8_0,
        matmul_q4_k,
        matmul_q6_k,
        matmul_activations,
        matmul_residual,
        matmul_strided,
        epilogues,
        random_graphs,
    ]
);

// The kernels that sum with `group_sum` (mat-vecs, the delta rule) again with their reductions
// in workgroup memory alone (where the adapter has subgroups, the cases above sum through
// subgroup shuffles first).
op_suite!(
    wgpu_without_subgroups,
    super::wgpu_backend(true),
    [
        matmul_float,
        matmul_q4_k,
        matvec_long_rows,
        matmul_residual,
        matmul_cat,
        matmul_pair,
        norm_matvec,
        norm_moe,
        matvec_input,
        matmul_id,
        matmul_id_pair,
        epilogues,
        gated_delta_net_recurrent,
        gated_delta_net_in_place,
    ]
);
