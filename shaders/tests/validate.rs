//! Every kernel in every specialisation the backend can ask for parses and validates with naga,
//! without a GPU.

#![allow(clippy::unwrap_used)]

use weft_graph::{BinaryOp, DType, FusedProgram, Instr, NormKind, UnaryOp};
use weft_shaders::{
    BcNormSpec, EpilogueSpec, Home, Kernel, ScanDtSpec, Source, Spec, TopKSpec, XNormSpec,
    XProgSpec, generate,
};

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const WEIGHTS: [DType; 11] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
];

fn arena(dtype: DType) -> Source {
    Source {
        home: Home::Arena,
        dtype,
    }
}
fn ext(b: u32, dtype: DType) -> Source {
    Source {
        home: Home::External(b),
        dtype,
    }
}

fn variants() -> Vec<Spec> {
    let mut v = vec![];
    let unaries = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Square,
        UnaryOp::Tanh,
        UnaryOp::Relu,
        UnaryOp::SqrRelu,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::Gelu,
        UnaryOp::Softplus,
        UnaryOp::Scale(0.5),
        UnaryOp::Offset(-1.0),
        UnaryOp::Clamp {
            min: -1.0,
            max: 2.0,
        },
    ];
    for u in unaries {
        for src in [
            arena(DType::F32),
            ext(0, DType::F16),
            ext(0, DType::BF16),
            ext(0, DType::F32),
        ] {
            let mut s = Spec::new(Kernel::Elementwise, vec![src]);
            s.program = Some(FusedProgram {
                head: None,
                code: vec![Instr::Load(0), Instr::Unary(u, 0)],
            });
            v.push(s);
        }
    }
    for b in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
        let mut s = Spec::new(
            Kernel::Elementwise,
            vec![arena(DType::F32), ext(1, DType::F32)],
        );
        s.program = Some(FusedProgram {
            head: None,
            code: vec![Instr::Load(0), Instr::Load(1), Instr::Binary(b, 0, 1)],
        });
        v.push(s);
    }
    for head in [NormKind::Rms { eps: 1e-5 }, NormKind::L2 { eps: 1e-6 }] {
        let mut s = Spec::new(
            Kernel::FusedNorm,
            vec![arena(DType::F32), ext(0, DType::F32)],
        );
        s.program = Some(FusedProgram {
            head: Some(head),
            code: vec![
                Instr::Load(0),
                Instr::Load(1),
                Instr::Binary(BinaryOp::Mul, 0, 1),
                Instr::Unary(UnaryOp::Silu, 2),
            ],
        });
        v.push(s);
    }
    v.push(Spec::new(Kernel::CopyBits, vec![arena(DType::I32)]));
    v.push(Spec::new(Kernel::CopyBits, vec![ext(0, DType::I32)]));
    for w in WEIGHTS {
        for k in [Kernel::MatMul, Kernel::MatMulRows, Kernel::MatMulCoop] {
            v.push(Spec::new(k, vec![arena(DType::F32), ext(0, w)]));
        }
        for k in [Kernel::MatMulId, Kernel::MoeRows, Kernel::MatMulIdRows] {
            v.push(Spec::new(
                k,
                vec![arena(DType::F32), ext(0, w), arena(DType::I32)],
            ));
        }
        v.push(Spec::new(
            Kernel::GetRows,
            vec![ext(0, w), arena(DType::I32)],
        ));
    }
    // ids chosen in the kernel from rows of logits
    for (kernel, src, off) in [
        (Kernel::MatMulId, 2, 5),
        (Kernel::GetRows, 1, 5),
        (Kernel::SoftMax, 1, 17),
    ] {
        let mut sources = vec![arena(DType::F32), ext(0, DType::Q4K), arena(DType::F32)];
        sources.truncate(src + 1);
        sources[src] = arena(DType::F32);
        let mut s = Spec::new(kernel, sources);
        s.top_k = Some(TopKSpec {
            src,
            k: 4,
            row: 32,
            stride: 40,
            off,
        });
        if kernel == Kernel::SoftMax {
            s.aliases = vec![("ldidx", 1)];
        }
        v.push(s);
    }
    // several weights of different dtypes behind one activation row
    v.push(Spec::new(
        Kernel::MatMulCat,
        vec![
            arena(DType::F32),
            ext(0, DType::Q4K),
            ext(1, DType::Q6K),
            ext(2, DType::F16),
        ],
    ));
    v.push(Spec::new(
        Kernel::MatMulCat,
        vec![arena(DType::F32), arena(DType::F32), ext(0, DType::Q8_0)],
    ));
    for k in [Kernel::MatMul, Kernel::MatMulRows, Kernel::MatMulCoop] {
        v.push(Spec::new(k, vec![arena(DType::F32), arena(DType::F32)]));
        // with a residual added as the output is written
        v.push(Spec::new(
            k,
            vec![arena(DType::F32), ext(0, DType::Q4K), arena(DType::F32)],
        ));
    }
    v.push(Spec::new(
        Kernel::GetRows,
        vec![arena(DType::F32), arena(DType::I32)],
    ));
    for masked in [false, true] {
        let mut s = Spec::new(Kernel::SoftMax, vec![arena(DType::F32), arena(DType::F32)]);
        if masked {
            s.aliases.push(("ldmask", 1));
        }
        v.push(s);
    }
    // the softmax of values gathered through indices
    let mut s = Spec::new(Kernel::SoftMax, vec![arena(DType::F32), arena(DType::I32)]);
    s.aliases.push(("ldidx", 1));
    v.push(s);
    v.push(Spec::new(
        Kernel::Rope,
        vec![arena(DType::F32), arena(DType::I32)],
    ));
    for kv in FLOATS {
        // (q, the caches' windows, a mask and a gate)
        let masked_gated = |k: Kernel| {
            let mut s = Spec::new(
                k,
                vec![
                    arena(DType::F32),
                    ext(0, kv),
                    ext(1, kv),
                    arena(DType::F32),
                    arena(DType::F32),
                ],
            );
            s.aliases = vec![("ldmask", 3), ("ldgate", 4)];
            s
        };
        let mut s = masked_gated(Kernel::Attention);
        v.push(s.clone());
        // decode attention writing the new key and value into its caches
        s.sources.extend([arena(DType::F32), arena(DType::I32)]);
        s.aliases = vec![("ldmask", 3), ("ldkn", 4), ("ldvn", 5), ("ldidx", 6)];
        s.puts = vec![(0, kv), (1, kv)];
        v.push(s);
        v.push(Spec::new(
            Kernel::Attention,
            vec![arena(DType::F32), arena(DType::F32), arena(DType::F32)],
        ));
        // a prompt's, by blocks of queries
        v.push(masked_gated(Kernel::AttentionRows));
    }
    v.push(Spec::new(
        Kernel::Concat,
        vec![arena(DType::F32), arena(DType::F32)],
    ));
    v.push(Spec::new(
        Kernel::SsmConv,
        vec![arena(DType::F32), ext(0, DType::F32)],
    ));
    v.push(Spec::new(Kernel::SsmScan, vec![arena(DType::F32); 6]));
    v.push(Spec::new(Kernel::SsmScanLanes, vec![arena(DType::F32); 6]));
    v.push(Spec::new(
        Kernel::SsmScanLanesWide,
        vec![arena(DType::F32); 6],
    ));
    v.push(Spec::new(Kernel::SsmScanChunks, vec![arena(DType::F32); 6]));
    v.push(Spec::new(
        Kernel::SsmScanChunksWide,
        vec![arena(DType::F32); 6],
    ));
    v.push(conv_in_cache());
    // the state read and written in its cache, rows picked by slots
    for k in [
        Kernel::SsmScan,
        Kernel::SsmScanLanes,
        Kernel::SsmScanLanesWide,
        Kernel::SsmScanChunks,
        Kernel::SsmScanChunksWide,
    ] {
        v.push(state_in_cache(k));
    }
    for k in [
        Kernel::GatedDeltaNet,
        Kernel::GatedDeltaPrep,
        Kernel::GatedDeltaChunks,
    ] {
        v.extend(delta_variants(k));
    }
    // a decode matmul computing its row: a gated group norm (F16 weight), a gated unit (Q4_K)
    for (w, head) in [(DType::F16, true), (DType::Q4K, false)] {
        let mut s = Spec::new(
            Kernel::MatMul,
            vec![
                arena(DType::F32),
                ext(0, w),
                arena(DType::F32),
                arena(DType::F32),
            ],
        );
        let code = if head {
            vec![
                Instr::Load(0),
                Instr::Load(1),
                Instr::Binary(BinaryOp::Mul, 0, 1),
                Instr::Load(2),
                Instr::Unary(UnaryOp::Silu, 3),
                Instr::Binary(BinaryOp::Mul, 2, 4),
            ]
        } else {
            vec![
                Instr::Load(1),
                Instr::Unary(UnaryOp::Silu, 0),
                Instr::Load(0),
                Instr::Binary(BinaryOp::Mul, 1, 2),
            ]
        };
        s.x_prog = Some(Box::new(XProgSpec {
            program: EpilogueSpec {
                program: FusedProgram {
                    head: head.then_some(NormKind::Rms { eps: 1e-6 }),
                    code,
                },
                first: 2,
                params: 15,
                pair: false,
                range: None,
            },
            row: 14,
            staged: if head { 3072 } else { 0 },
        }));
        v.push(s);
    }
    // Mamba1's dt computed in the scan from its projection (F16 and Q8_0 weights; its rows
    // normalised first, Jamba's), in its cache, with an epilogue after it
    for (k, w, norm) in [
        (Kernel::SsmScanLanes, DType::F16, false),
        (Kernel::SsmScanLanes, DType::Q8_0, true),
        (Kernel::SsmScanChunks, DType::Q8_0, false),
        (Kernel::SsmScanChunksWide, DType::F16, false),
        (Kernel::SsmScan, DType::F16, true),
    ] {
        let mut s = state_in_cache(k);
        s.sources.push(ext(1, w));
        if norm {
            s.sources.push(arena(DType::F32));
        }
        s.sources.extend([ext(2, DType::F32), arena(DType::F32)]);
        s.externals = 3;
        let (n, nu) = (norm as usize, norm as u32);
        // (and with the dt norm, B's and C's: their weights' parameter words, after the
        // epilogue's, reusing the dt norm's weight as a source)
        s.bc_norm = norm.then_some(BcNormSpec {
            kind: NormKind::Rms { eps: 1e-6 },
            weights: [Some((8, 45)), Some((8, 46))],
        });
        s.scan_dt = Some(Box::new(ScanDtSpec {
            weight: 7,
            params: 16,
            x_norm: norm.then_some(XNormSpec {
                kind: NormKind::Rms { eps: 1e-6 },
                weight: Some((8, 21)),
                staged: 0,
            }),
            program: EpilogueSpec {
                program: FusedProgram {
                    head: None,
                    code: vec![
                        Instr::Load(0),
                        Instr::Load(1),
                        Instr::Binary(BinaryOp::Add, 0, 1),
                        Instr::Unary(UnaryOp::Softplus, 2),
                    ],
                },
                first: 8 + n,
                params: 21 + nu,
                pair: false,
                range: None,
            },
        }));
        s.epilogue = Some(EpilogueSpec {
            program: FusedProgram {
                head: None,
                code: vec![
                    Instr::Load(0),
                    Instr::Load(1),
                    Instr::Binary(BinaryOp::Mul, 0, 1),
                ],
            },
            first: 9 + n,
            params: 30 + nu,
            pair: false,
            range: None,
        });
        v.push(s);
    }
    // epilogues: every kernel that applies one, with a source in the arena and a weight; and
    // the pair of a gated unit
    let prog = |results: u8| FusedProgram {
        head: None,
        code: vec![
            Instr::Load(0),
            Instr::Load(results),
            Instr::Binary(BinaryOp::Add, 0, 1),
            Instr::Unary(UnaryOp::Silu, 2),
            Instr::Load(results + 1),
            Instr::Binary(BinaryOp::Mul, 3, 4),
        ],
    };
    for base in variants_applying_epilogues() {
        let mut s = base;
        let first = s.sources.len();
        let b = s.externals;
        s.sources.extend([arena(DType::F32), ext(b, DType::F32)]);
        s.externals += 1;
        s.epilogue = Some(EpilogueSpec {
            program: prog(1),
            first,
            params: 40,
            pair: false,
            range: None,
        });
        v.push(s.clone());
        // over part of the results only
        if let Some(e) = s.epilogue.as_mut() {
            e.range = Some((32, 16));
        }
        v.push(s);
    }
    for (a, b) in [(DType::F16, DType::F16), (DType::Q4K, DType::Q6K)] {
        let mut s = Spec::new(
            Kernel::MatMulPair,
            vec![
                arena(DType::F32),
                ext(0, a),
                ext(1, b),
                arena(DType::F32),
                ext(2, DType::F32),
            ],
        );
        let mut pair = prog(2);
        pair.code[0] = Instr::Load(1);
        s.epilogue = Some(EpilogueSpec {
            program: pair,
            first: 3,
            params: 20,
            pair: true,
            range: None,
        });
        v.push(s);
    }
    // the experts' pair: gate and up of mixed dtypes, SiLU · up times a routing weight
    for (a, b) in [(DType::F16, DType::F16), (DType::Q4K, DType::Q8_0)] {
        let mut s = Spec::new(
            Kernel::MatMulIdPair,
            vec![
                arena(DType::F32),
                ext(0, a),
                arena(DType::I32),
                ext(1, b),
                arena(DType::F32),
            ],
        );
        s.epilogue = Some(EpilogueSpec {
            program: FusedProgram {
                head: None,
                code: vec![
                    Instr::Load(0),
                    Instr::Unary(UnaryOp::Silu, 0),
                    Instr::Load(1),
                    Instr::Binary(BinaryOp::Mul, 1, 2),
                    Instr::Load(2),
                    Instr::Binary(BinaryOp::Mul, 3, 4),
                ],
            },
            first: 4,
            params: 12,
            pair: true,
            range: None,
        });
        // (and the same pair tiled, for prompts)
        let mut tiled = s.clone();
        tiled.kernel = Kernel::MatMulIdPairRows;
        v.push(tiled);
        v.push(s);
    }
    // mat-vecs normalising their row (with a norm weight, and an l2 norm without one; the row
    // staged in workgroup memory but for the plain mat-vec's)
    for (k, kind, weighted) in [
        (Kernel::MatMul, NormKind::Rms { eps: 1e-5 }, true),
        (Kernel::MatMulCat, NormKind::L2 { eps: 1e-6 }, false),
        (Kernel::MatMulPair, NormKind::Rms { eps: 1e-6 }, true),
    ] {
        let mut srcs = vec![arena(DType::F32), ext(0, DType::F16), ext(1, DType::Q4K)];
        if k == Kernel::MatMul {
            srcs.pop();
        }
        let weight = weighted.then(|| {
            srcs.push(ext(2, DType::F32));
            (srcs.len() - 1, 12)
        });
        let mut s = Spec::new(k, srcs);
        s.x_norm = Some(XNormSpec {
            kind,
            weight,
            staged: if k == Kernel::MatMulPair {
                6144
            } else if k == Kernel::MatMulCat {
                3072
            } else {
                0
            },
        });
        if k == Kernel::MatMulPair {
            s.epilogue = Some(EpilogueSpec {
                program: FusedProgram {
                    head: None,
                    code: vec![
                        Instr::Load(0),
                        Instr::Load(1),
                        Instr::Binary(BinaryOp::Mul, 0, 1),
                    ],
                },
                first: s.sources.len(),
                params: 20,
                pair: true,
                range: None,
            });
        }
        v.push(s);
    }
    v.push(Spec::new(Kernel::TopK, vec![arena(DType::F32)]));
    v.push(Spec::new(Kernel::Reduce, vec![arena(DType::F32)]));
    for d in FLOATS {
        let mut s = Spec::new(
            Kernel::StoreRows,
            vec![arena(DType::F32), arena(DType::I32)],
        );
        s.store = Some((0, d));
        s.externals = 1;
        v.push(s);
    }
    // the mat-vecs' and the lanes scan's reductions through subgroup shuffles: all 32 lanes (no
    // workgroup memory left), 8 lanes then workgroup memory, and an adapter with wider subgroups
    let matvecs: Vec<Spec> = v
        .iter()
        .filter(|s| {
            matches!(
                s.kernel,
                Kernel::MatMul
                    | Kernel::MatMulCat
                    | Kernel::MatMulPair
                    | Kernel::MatMulId
                    | Kernel::MatMulIdPair
                    | Kernel::SsmScanLanes
                    | Kernel::SsmScanLanesWide
            )
        })
        .cloned()
        .collect();
    for (i, mut s) in matvecs.into_iter().enumerate() {
        s.subgroup = [32, 8, 64][i % 3];
        v.push(s);
    }
    v
}

/// The conv step on its window in a cache (binding 0, written).
fn conv_in_cache() -> Spec {
    let mut s = Spec::new(
        Kernel::SsmConvCached,
        vec![
            ext(0, DType::F32),
            arena(DType::F32),
            arena(DType::F32),
            arena(DType::I32),
        ],
    );
    s.store = Some((0, DType::F32));
    s
}

/// A scan or delta rule on its state in a cache (binding 0, written), rows picked by slots.
/// The delta rule's kernel `k`: its state as an input and in a cache, with q and k normalised
/// inside it, and with its gates computed as it reads them.
fn delta_variants(k: Kernel) -> Vec<Spec> {
    let mut v = vec![state_in_cache(k), Spec::new(k, vec![arena(DType::F32); 6])];
    // q and k normalised inside the delta rule (an rms norm then a scale; an l2 norm)
    let mut s = state_in_cache(k);
    s.qk_norm = Some([
        FusedProgram {
            head: Some(NormKind::Rms { eps: 1e-6 }),
            code: vec![Instr::Load(0), Instr::Unary(UnaryOp::Scale(0.1), 0)],
        },
        FusedProgram {
            head: Some(NormKind::L2 { eps: 1e-6 }),
            code: vec![Instr::Load(0)],
        },
    ]);
    v.push(s.clone());
    // and its gates computed as it reads them: g = softplus(a + bias) · A (bias and A
    // weights), beta = sigmoid(b)
    // (each program's sources registered after the op's own: a, bias, A, then b)
    s.sources.extend([
        arena(DType::F32),
        ext(1, DType::F32),
        ext(2, DType::F32),
        arena(DType::F32),
    ]);
    s.externals = 3;
    s.gates = Some(Box::new([
        EpilogueSpec {
            program: FusedProgram {
                head: None,
                code: vec![
                    Instr::Load(0),
                    Instr::Load(1),
                    Instr::Binary(BinaryOp::Add, 0, 1),
                    Instr::Unary(UnaryOp::Softplus, 2),
                    Instr::Load(2),
                    Instr::Binary(BinaryOp::Mul, 3, 4),
                ],
            },
            first: 7,
            params: 15,
            pair: false,
            range: None,
        },
        EpilogueSpec {
            program: FusedProgram {
                head: None,
                code: vec![Instr::Load(0), Instr::Unary(UnaryOp::Sigmoid, 0)],
            },
            first: 10,
            params: 42,
            pair: false,
            range: None,
        },
    ]));
    v.push(s);
    v
}

fn state_in_cache(k: Kernel) -> Spec {
    let mut srcs = vec![ext(0, DType::F32)];
    srcs.extend([arena(DType::F32); 5]);
    srcs.push(arena(DType::I32));
    let mut s = Spec::new(k, srcs);
    s.store = Some((0, DType::F32));
    s
}

/// One spec of each kernel that applies epilogues, without one.
fn variants_applying_epilogues() -> Vec<Spec> {
    let mut v = vec![
        Spec::new(Kernel::MatMul, vec![arena(DType::F32), ext(0, DType::Q4K)]),
        Spec::new(
            Kernel::MatMulRows,
            vec![arena(DType::F32), ext(0, DType::F16)],
        ),
        Spec::new(
            Kernel::MatMulCoop,
            vec![arena(DType::F32), ext(0, DType::Q4K)],
        ),
        Spec::new(
            Kernel::MatMulCat,
            vec![arena(DType::F32), ext(0, DType::F16), ext(1, DType::Q8_0)],
        ),
        Spec::new(
            Kernel::MatMulId,
            vec![arena(DType::F32), ext(0, DType::Q4K), arena(DType::I32)],
        ),
        Spec::new(
            Kernel::MatMulIdRows,
            vec![arena(DType::F32), ext(0, DType::Q4K), arena(DType::I32)],
        ),
        Spec::new(Kernel::SsmConv, vec![arena(DType::F32), ext(0, DType::F32)]),
    ];
    v.push(conv_in_cache());
    v.extend(
        [
            Kernel::SsmScan,
            Kernel::SsmScanLanes,
            Kernel::SsmScanLanesWide,
            Kernel::SsmScanChunks,
            Kernel::SsmScanChunksWide,
        ]
        .map(state_in_cache),
    );
    assert!(Kernel::ALL.iter().all(|k| {
        let pair = matches!(
            k,
            Kernel::MatMulPair | Kernel::MatMulIdPair | Kernel::MatMulIdPairRows
        );
        k.applies_epilogue() == (v.iter().any(|s| s.kernel == *k) || pair)
    }));
    v
}

#[test]
fn every_kernel_variant_validates_with_naga() {
    let specs = variants();
    for k in Kernel::ALL {
        assert!(
            specs.iter().any(|s| s.kernel == k),
            "no variant of {}",
            k.name()
        );
    }
    for spec in &specs {
        let src = generate(spec).unwrap_or_else(|e| panic!("{e}"));
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
            panic!(
                "{} {:?}: {}\n{src}",
                spec.kernel.name(),
                spec.sources,
                e.emit_to_string(&src)
            )
        });
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default()
                | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32
                | naga::valid::Capabilities::SUBGROUP
                | naga::valid::Capabilities::SHADER_FLOAT16
                | naga::valid::Capabilities::COOPERATIVE_MATRIX,
        )
        .validate(&module)
        .unwrap_or_else(|e| {
            panic!(
                "{} {:?}: {}\n{src}",
                spec.kernel.name(),
                spec.sources,
                e.emit_to_string(&src)
            )
        });
        // the kernels no CI adapter runs (cooperative matrices) are at least written as
        // SPIR-V, as the Vulkan backend would on a GPU that has them
        if spec.kernel.needs_cooperative_matrices() {
            let options = naga::back::spv::Options {
                lang_version: (1, 3),
                ..Default::default()
            };
            naga::back::spv::write_vec(&module, &info, &options, None).unwrap_or_else(|e| {
                panic!("{} {:?}: SPIR-V: {e}", spec.kernel.name(), spec.sources)
            });
        }
    }
}

#[test]
fn the_bandwidth_probe_validates_with_naga() {
    let module = naga::front::wgsl::parse_str(weft_shaders::BANDWIDTH_WGSL).unwrap();
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap();
}

#[test]
fn bad_specs_are_errors() {
    let mut s = Spec::new(Kernel::Elementwise, vec![arena(DType::F32)]);
    assert!(generate(&s).is_err(), "elementwise without a program");
    s.program = Some(FusedProgram {
        head: None,
        code: vec![],
    });
    assert!(generate(&s).is_err(), "empty program");
    assert!(
        generate(&Spec::new(
            Kernel::MatMul,
            vec![arena(DType::F32), arena(DType::Q4K)]
        ))
        .is_err()
    );
    assert!(
        generate(&Spec::new(
            Kernel::StoreRows,
            vec![arena(DType::F32), arena(DType::I32)]
        ))
        .is_err()
    );
    let mut a = Spec::new(Kernel::SoftMax, vec![arena(DType::F32)]);
    a.aliases.push(("ldmask", 3));
    assert!(generate(&a).is_err());
    let mut m = Spec::new(Kernel::MatMul, vec![arena(DType::F32), ext(0, DType::F16)]);
    assert!(generate(&m).is_ok());
    m.subgroup = 12;
    assert!(
        generate(&m).is_err(),
        "a subgroup size that is not a power of two"
    );
}

/// A mat-vec stages its row in 12 KiB wherever it fits, in 24 KiB only where the adapter
/// leaves 2 KiB beside them, and not at all past 6144 elements.
#[test]
fn staged_rows_fit_the_adapter() {
    use weft_shaders::stage_len;
    assert_eq!(stage_len(2048, 16384), 3072);
    assert_eq!(stage_len(3072, 16384), 3072);
    assert_eq!(stage_len(3073, 16384), 0);
    assert_eq!(stage_len(4096, 32768), 6144);
    assert_eq!(stage_len(4096, 26623), 0);
    assert_eq!(stage_len(6144, 49152), 6144);
    assert_eq!(stage_len(6145, 49152), 0);
}
