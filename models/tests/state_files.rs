//! State files: save a session, restore it into a new one, continue, and get bit-identical
//! logits to never stopping; files for another model, version or size, or damaged ones, are
//! errors that leave the session as it was.

#![allow(clippy::unwrap_used)]

mod common;

use common::dir;
use weft_backends::{Backend, CpuBackend};
use weft_models::gguf::GgufFile;
use weft_models::{MemoryConfig, Session};

fn session(arch: &str, be: Box<dyn Backend>, cells: usize) -> Session {
    let gguf = GgufFile::open(dir(arch).join(format!("{arch}-f32.gguf"))).unwrap();
    let cfg = MemoryConfig {
        cells,
        sequences: 2,
        checkpoint_every: 4,
        ..Default::default()
    };
    Session::new(&gguf, be, cfg, |_, _| {}).unwrap()
}

fn resume(arch: &str, make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    let Some(be) = make() else { return };
    let a: Vec<i32> = (0..9).map(|i| (i * 31 + 7) % 500).collect();
    let b: Vec<i32> = (0..5).map(|i| (i * 17 + 3) % 500).collect();
    let mut s = session(arch, be, 64);
    s.decode(&[(0, &a), (1, &b)]).unwrap();
    let file = s.save_state().unwrap();
    let straight = s.decode(&[(0, &[42]), (1, &[43])]).unwrap();
    let mut t = session(arch, make().unwrap(), 64);
    t.load_state(&file).unwrap();
    assert_eq!(
        t.memory().history,
        s.memory()
            .history
            .iter()
            .map(|h| h[..h.len() - 1].to_vec())
            .collect::<Vec<_>>()
    );
    let resumed = t.decode(&[(0, &[42]), (1, &[43])]).unwrap();
    assert_eq!(
        resumed, straight,
        "{arch}: resumed logits differ from never stopping"
    );
}

#[test]
fn cpu_save_restore_continue_is_bit_identical() {
    for arch in ["llama", "mamba", "mamba2"] {
        resume(arch, &|| Some(Box::new(CpuBackend::new())));
    }
}

#[test]
fn wgpu_save_restore_continue_is_bit_identical() {
    for arch in ["llama", "mamba", "mamba2"] {
        resume(arch, &common::wgpu);
    }
}

#[test]
fn wrong_or_damaged_state_files_are_errors_and_change_nothing() {
    let mut s = session("mamba", Box::new(CpuBackend::new()), 64);
    s.decode(&[(0, &[1, 2, 3, 4, 5])]).unwrap();
    let file = s.save_state().unwrap();
    let mut t = session("mamba", Box::new(CpuBackend::new()), 64);
    t.decode(&[(1, &[9, 9])]).unwrap();
    let before = (
        t.memory().kv.clone(),
        t.memory().rec.clone(),
        t.memory().history.clone(),
    );
    let unchanged = |t: &Session| {
        assert_eq!(
            (
                t.memory().kv.clone(),
                t.memory().rec.clone(),
                t.memory().history.clone()
            ),
            before
        )
    };
    let mut bad_version = file.clone();
    bad_version[8] = 99;
    let mut flipped = file.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (what, f, needle) in [
        ("version", bad_version, "version"),
        ("corrupt", flipped, "checksum"),
        ("truncated", file[..file.len() / 3].to_vec(), "checksum"),
        ("not a state", b"hello".to_vec(), "not a weft state"),
    ] {
        let e = t.load_state(&f).unwrap_err().to_string();
        assert!(e.contains(needle), "{what}: {e}");
        unchanged(&t);
    }
    // another model, another session size
    let mut l = session("llama", Box::new(CpuBackend::new()), 64);
    assert!(
        l.load_state(&file)
            .unwrap_err()
            .to_string()
            .contains("another model")
    );
    let mut big = session("mamba", Box::new(CpuBackend::new()), 128);
    assert!(
        big.load_state(&file)
            .unwrap_err()
            .to_string()
            .contains("another model or another session size")
    );
    t.load_state(&file).unwrap();
    assert_eq!(t.memory().history[0], vec![1, 2, 3, 4, 5]);
}

/// One sequence saved from a session and loaded as another sequence id of a differently sized
/// session that already holds other work continues like the original (its cells land elsewhere,
/// so attention sums in another order: equal within 1e-5, not bit for bit).
fn move_one_sequence(arch: &str, make: &dyn Fn() -> Option<Box<dyn Backend>>) {
    let Some(be) = make() else { return };
    let a: Vec<i32> = (0..9).map(|i| (i * 31 + 7) % 500).collect();
    let b: Vec<i32> = (0..5).map(|i| (i * 17 + 3) % 500).collect();
    let mut s = session(arch, be, 64);
    s.decode(&[(0, &a), (1, &b)]).unwrap();
    let file = s.save_seq(1).unwrap();
    let want = s.decode(&[(1, &[43])]).unwrap().remove(0);
    let gguf = GgufFile::open(dir(arch).join(format!("{arch}-f32.gguf"))).unwrap();
    let cfg = MemoryConfig {
        cells: 96,
        sequences: 3,
        checkpoint_every: 4,
        ..Default::default()
    };
    let mut t = Session::new(&gguf, make().unwrap(), cfg, |_, _| {}).unwrap();
    t.decode(&[(0, &[5, 6, 7])]).unwrap();
    t.load_seq(&file, 2).unwrap();
    assert_eq!(t.memory().seq_len(2), b.len());
    let got = t.decode(&[(2, &[43])]).unwrap().remove(0);
    let num: f32 = got
        .iter()
        .zip(&want)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt();
    let den: f32 = want.iter().map(|y| y * y).sum::<f32>().sqrt();
    assert!(
        num <= 1e-5 * den,
        "{arch}: moved sequence differs by {}",
        num / den
    );
    // loading into a sequence that is in use, or a file of another model, changes nothing
    let before = (
        t.memory().kv.clone(),
        t.memory().rec.clone(),
        t.memory().history.clone(),
    );
    assert!(
        t.load_seq(&file, 0)
            .unwrap_err()
            .to_string()
            .contains("not empty")
    );
    let other = if arch == "llama" { "mamba" } else { "llama" };
    let mut o = session(other, Box::new(CpuBackend::new()), 64);
    o.decode(&[(0, &[1, 2])]).unwrap();
    let foreign = o.save_seq(0).unwrap();
    assert!(
        t.load_seq(&foreign, 1)
            .unwrap_err()
            .to_string()
            .contains("another model")
    );
    assert_eq!(
        (
            t.memory().kv.clone(),
            t.memory().rec.clone(),
            t.memory().history.clone()
        ),
        before
    );
}

#[test]
fn cpu_one_sequence_moves_between_sessions() {
    for arch in ["llama", "mamba", "mamba2", "jamba", "falcon_h1"] {
        move_one_sequence(arch, &|| Some(Box::new(CpuBackend::new())));
    }
}

#[test]
fn wgpu_one_sequence_moves_between_sessions() {
    for arch in ["llama", "mamba", "mamba2", "jamba", "falcon_h1"] {
        move_one_sequence(arch, &common::wgpu);
    }
}
