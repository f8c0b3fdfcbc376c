//! Sequence operations on attention and recurrent fixture models, on every backend: a fork made
//! with `seq_cp` decodes like a fresh run of its own tokens, removing a tail of an attention
//! sequence and decoding other tokens equals a fresh run, and illegal requests are errors that
//! leave the memory exactly as it was.

#![allow(clippy::unwrap_used)]

mod common;

use common::dir;
use weft_backends::{Backend, CpuBackend};
use weft_models::gguf::GgufFile;
use weft_models::memory::PosRange;
use weft_models::{MemoryConfig, Session};

const P: [i32; 6] = [11, 200, 37, 4, 99, 150];
const A: [i32; 3] = [7, 8, 9];
const B: [i32; 4] = [300, 1, 45, 2];

fn session(arch: &str, be: Box<dyn Backend>) -> Session {
    let gguf = GgufFile::open(dir(arch).join(format!("{arch}-f32.gguf"))).unwrap();
    Session::new(
        &gguf,
        be,
        MemoryConfig {
            cells: 64,
            sequences: 3,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap()
}

fn fresh_last(arch: &str, make: &dyn Fn() -> Option<Box<dyn Backend>>, toks: &[i32]) -> Vec<f32> {
    let mut s = session(arch, make().unwrap());
    let out = s.decode(&[(0, toks)]).unwrap().remove(0);
    out[out.len() - s.n_vocab()..].to_vec()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    let num: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt();
    let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    assert!(num <= 1e-5 * den, "{what}: relative error {}", num / den);
}

fn fork_and_trim(arch: &str, make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    let Some(be) = make() else { return };
    let mut s = session(arch, be);
    let v = s.n_vocab();
    s.decode(&[(0, &P)]).unwrap();
    s.seq_cp(0, 1).unwrap();
    let out = s.decode(&[(0, &A[..]), (1, &B[..])]).unwrap();
    let pa: Vec<i32> = P.iter().chain(&A).copied().collect();
    let pb: Vec<i32> = P.iter().chain(&B).copied().collect();
    close(
        &out[0][out[0].len() - v..],
        &fresh_last(arch, make, &pa),
        &format!("{arch}: fork 0"),
    );
    close(
        &out[1][out[1].len() - v..],
        &fresh_last(arch, make, &pb),
        &format!("{arch}: fork 1"),
    );

    // Dropping a whole sequence frees it: it then decodes like a new one.
    s.seq_rm(1, PosRange::ALL).unwrap();
    let out = s.decode(&[(1, &B[..])]).unwrap().remove(0);
    close(
        &out[out.len() - v..],
        &fresh_last(arch, make, &B),
        &format!("{arch}: reused sequence"),
    );

    // keep only sequence 0, then a fork of it is still P + A
    s.seq_keep(0).unwrap();
    assert_eq!(s.memory().seq_len(1), 0);
    s.seq_cp(0, 2).unwrap();
    let out = s.decode(&[(2, &[5])]).unwrap().remove(0);
    let pa5: Vec<i32> = pa.iter().copied().chain([5]).collect();
    close(
        &out[out.len() - v..],
        &fresh_last(arch, make, &pa5),
        &format!("{arch}: fork after keep"),
    );
}

#[test]
fn cpu_forks_decode_like_fresh_runs() {
    for arch in ["llama", "mamba", "mamba2"] {
        fork_and_trim(arch, &|| Some(Box::new(CpuBackend::new())));
    }
}

#[test]
fn wgpu_forks_decode_like_fresh_runs() {
    for arch in ["llama", "mamba", "mamba2"] {
        fork_and_trim(arch, &common::wgpu);
    }
}

#[test]
fn removing_an_attention_tail_then_decoding_equals_a_fresh_run() {
    let mut s = session("llama", Box::new(CpuBackend::new()));
    let v = s.n_vocab();
    s.decode(&[(0, &P)]).unwrap();
    s.seq_rm(
        0,
        PosRange {
            p0: Some(3),
            p1: None,
        },
    )
    .unwrap();
    assert_eq!(s.memory().seq_len(0), 3);
    let out = s.decode(&[(0, &B[..])]).unwrap().remove(0);
    let want: Vec<i32> = P[..3].iter().chain(&B).copied().collect();
    close(
        &out[out.len() - v..],
        &fresh_last("llama", &|| Some(Box::new(CpuBackend::new())), &want),
        "llama tail",
    );
}

#[test]
fn illegal_requests_leave_memory_unchanged() {
    let mut s = session("mamba", Box::new(CpuBackend::new()));
    s.decode(&[(0, &P)]).unwrap();
    let before = (s.memory().kv.clone(), s.memory().rec.clone());
    let middle = s
        .seq_rm(
            0,
            PosRange {
                p0: Some(2),
                p1: Some(4),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(middle.contains("middle"), "{middle}");
    let tail = s
        .seq_rm(
            0,
            PosRange {
                p0: Some(2),
                p1: None,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(tail.contains("checkpoint"), "{tail}");
    assert!(
        s.seq_cp(0, 7)
            .unwrap_err()
            .to_string()
            .contains("sequence 7")
    );
    assert!(s.seq_keep(9).is_err());
    assert_eq!((s.memory().kv.clone(), s.memory().rec.clone()), before);
    // the sequence still continues where it was
    assert_eq!(s.memory().seq_len(0), P.len());
    // a full context is an error too, and changes nothing
    let mut l = session("llama", Box::new(CpuBackend::new()));
    l.decode(&[(0, &[1; 60])]).unwrap();
    let before = (l.memory().kv.clone(), l.memory().rec.clone());
    assert!(
        l.decode(&[(0, &[1; 5])])
            .unwrap_err()
            .to_string()
            .contains("context is full")
    );
    assert_eq!((l.memory().kv.clone(), l.memory().rec.clone()), before);
}

/// With checkpoints every 4 tokens, removing a tail of a recurrent sequence rolls back to the
/// nearest checkpoint, re-feeds only the tokens between it and the cut, and then decodes like a
/// fresh run of the kept tokens.
fn rollback(arch: &str, make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    let Some(be) = make() else { return };
    let gguf = GgufFile::open(dir(arch).join(format!("{arch}-f32.gguf"))).unwrap();
    let cfg = MemoryConfig {
        cells: 64,
        sequences: 2,
        checkpoint_every: 4,
        max_checkpoints: 8,
        ..Default::default()
    };
    let mut s = Session::new(&gguf, be, cfg, |_, _| {}).unwrap();
    let v = s.n_vocab();
    let prompt: Vec<i32> = (0..14).map(|i| (i * 37 + 5) % 500).collect();
    s.decode(&[(0, &prompt)]).unwrap();
    let cps: Vec<usize> = s.memory().checkpoints.of(0).iter().map(|c| c.pos).collect();
    assert_eq!(cps, vec![4, 8, 12], "{arch}: checkpoints");
    assert!(s.memory().checkpoints.bytes() > 0);
    let refed = s
        .seq_rm(
            0,
            PosRange {
                p0: Some(10),
                p1: None,
            },
        )
        .unwrap();
    assert_eq!(refed, 2, "{arch}: re-fed tokens 8..10 only");
    assert!(refed < 10);
    assert_eq!(s.memory().seq_len(0), 10);
    let out = s.decode(&[(0, &B[..])]).unwrap().remove(0);
    let want: Vec<i32> = prompt[..10].iter().chain(&B).copied().collect();
    close(
        &out[out.len() - v..],
        &fresh_last(arch, make, &want),
        &format!("{arch}: after rollback"),
    );
}

#[test]
fn cpu_recurrent_rollback_uses_checkpoints() {
    for arch in ["mamba", "mamba2"] {
        rollback(arch, &|| Some(Box::new(CpuBackend::new())));
    }
}

#[test]
fn wgpu_recurrent_rollback_uses_checkpoints() {
    for arch in ["mamba", "mamba2"] {
        rollback(arch, &common::wgpu);
    }
}

/// Rotary attention only sees relative positions, so shifting a whole sequence forward and
/// decoding on gives the logits of the unshifted run, provided the cached keys were re-rotated
/// by the shift (without that, every query–key distance would be off by the shift). Shifting
/// there and back is also the identity, and a context shift (drop the first tokens, move the
/// rest back) leaves the sequence length consistent.
fn context_shift(make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    let Some(be) = make() else { return };
    let pa: Vec<i32> = P.iter().chain(&A).copied().collect();
    let want = fresh_last("llama", make, &pa);
    let mut s = session("llama", be);
    let v = s.n_vocab();
    s.decode(&[(0, &P)]).unwrap();
    s.seq_add(0, PosRange::ALL, 5).unwrap();
    assert_eq!(s.memory().seq_len(0), P.len() + 5);
    let out = s.decode(&[(0, &A[..])]).unwrap().remove(0);
    close(
        &out[out.len() - v..],
        &want,
        "whole sequence shifted forward",
    );
    let mut t = session("llama", make().unwrap());
    t.decode(&[(0, &P)]).unwrap();
    t.seq_add(0, PosRange::ALL, 7).unwrap();
    t.seq_add(0, PosRange::ALL, -7).unwrap();
    let out = t.decode(&[(0, &A[..])]).unwrap().remove(0);
    close(&out[out.len() - v..], &want, "shift there and back");
    t.seq_rm(
        0,
        PosRange {
            p0: None,
            p1: Some(2),
        },
    )
    .unwrap();
    t.seq_add(
        0,
        PosRange {
            p0: Some(2),
            p1: None,
        },
        -2,
    )
    .unwrap();
    assert_eq!(t.memory().seq_len(0), P.len() + A.len() - 2);
}

#[test]
fn cpu_shifted_sequences_decode_like_unshifted_ones() {
    context_shift(&|| Some(Box::new(CpuBackend::new())));
}

#[test]
fn wgpu_shifted_sequences_decode_like_unshifted_ones() {
    context_shift(&common::wgpu);
}

#[test]
fn shifting_a_recurrent_sequence_is_an_error_that_changes_nothing() {
    let mut s = session("mamba", Box::new(CpuBackend::new()));
    s.decode(&[(0, &P)]).unwrap();
    let before = (s.memory().kv.clone(), s.memory().rec.clone());
    assert!(s.seq_add(0, PosRange::ALL, 3).is_err());
    assert_eq!((s.memory().kv.clone(), s.memory().rec.clone()), before);
}

/// `decode_last` returns exactly the last row `decode` would, for several sequences in one batch
/// of unequal lengths, and across the ubatches a recurrent batch is cut into.
fn last_rows(arch: &str, make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    let Some(be) = make() else { return };
    let mut all = session(arch, be);
    let mut last = session(arch, make().unwrap());
    let v = all.n_vocab();
    for batch in [
        vec![(0, &P[..]), (1, &B[..])],
        vec![(0, &A[..]), (1, &A[..1]), (2, &B[..2])],
        vec![(2, &[5][..])],
    ] {
        let full = all.decode(&batch).unwrap();
        let rows = last.decode_last(&batch).unwrap();
        for ((f, r), (seq, _)) in full.iter().zip(&rows).zip(&batch) {
            assert_eq!(r.len(), v, "{arch}: one row per sequence");
            close(r, &f[f.len() - v..], &format!("{arch} seq {seq} last row"));
        }
    }
}

#[test]
fn cpu_decode_last_is_the_last_row_of_decode() {
    for arch in ["llama", "mamba", "jamba"] {
        last_rows(arch, &|| Some(Box::new(CpuBackend::new())));
    }
}

#[test]
fn wgpu_decode_last_is_the_last_row_of_decode() {
    for arch in ["llama", "mamba", "jamba"] {
        last_rows(arch, &common::wgpu);
    }
}

/// A prompt long enough for the GPU to scan the SSM states in chunks side by side (and to run
/// the delta rule in chunks) gives, row for row, the logits of the same prompt decoded a few
/// tokens at a time (whose scans walk the tokens one by one) and those of the CPU.
fn long_prompt(arch: &str, make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    let Some(be) = make() else { return };
    let prompt: Vec<i32> = (0..45).map(|i| (i * 37 + 11) % 300).collect();
    // then a few tokens more, which start from the state the prompt left
    let run = |s: &mut Session, pieces: &[&[i32]]| -> Vec<f32> {
        let mut out = vec![];
        for p in pieces {
            out.extend(s.decode(&[(0, p)]).unwrap().remove(0));
        }
        out.extend(s.decode(&[(0, &A[..])]).unwrap().remove(0));
        out
    };
    let all = run(&mut session(arch, be), &[&prompt]);
    let short: Vec<&[i32]> = prompt.chunks(5).collect();
    let cut = run(&mut session(arch, make().unwrap()), &short);
    close(&all, &cut, &format!("{arch}: whole prompt against pieces"));
    let want = run(&mut session(arch, Box::new(CpuBackend::new())), &[&prompt]);
    close(&all, &want, &format!("{arch}: against the CPU"));
}

#[test]
fn wgpu_long_prompts_decode_like_short_pieces() {
    // (Mamba2's fixtures have 16 states too: the same kernel, over heads and B/C groups)
    for arch in [
        "mamba",
        "jamba",
        "mamba2",
        "nemotron_h",
        "qwen3_next",
        "qwen3_5",
    ] {
        long_prompt(arch, &common::wgpu);
    }
}
