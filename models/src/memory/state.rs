//! State files: a whole session's memory (KV cells and rows, recurrent slots and states, token
//! histories, checkpoints) in a versioned file with a checksum, bound to the model it was made
//! with.
//!
//! Layout (little endian): `b"WEFTSTAT"`, version `u32`, model fingerprint `u64`, then the
//! payload (config, cells, slots, histories, checkpoints, every layer's cache buffers as
//! length-prefixed bytes), then an FNV-1a `u64` of everything before it.

use super::{Checkpoint, Checkpoints, KvCells, Memory, RecurrentSlots};
use crate::error::{ModelError, Result};
use weft_backends::Backend;

const MAGIC: &[u8; 8] = b"WEFTSTAT";
/// Version of the state file layout.
pub const STATE_VERSION: u32 = 1;

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A fingerprint of what a state depends on: the model's identity and the memory's sizes.
pub fn fingerprint(model: &str, mem: &Memory) -> u64 {
    let c = &mem.config;
    fnv(format!(
        "{model}|{:?}|{}|{}|{}",
        mem.layers, c.cells, c.sequences, c.kv_dtype
    )
    .as_bytes())
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

fn bad(detail: impl Into<String>) -> ModelError {
    ModelError::BadState(detail.into())
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| bad("the file is truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(
            s.try_into().map_err(|_| bad("the file is truncated"))?,
        ))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()? as usize;
        if n > self.b.len() - self.at {
            return Err(bad("a length runs past the end of the file"));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.len()?;
        Ok(self.take(n)?.to_vec())
    }
}

/// Checks a file's magic, version and checksum; returns its body (without the checksum) and a
/// reader positioned after the version.
fn open_file<'a>(file: &'a [u8], magic: &[u8; 8], what: &str) -> Result<(&'a [u8], Reader<'a>)> {
    if file.len() < 8 + 4 + 8 + 8 || &file[..8] != magic {
        return Err(bad(format!("not a weft {what} file")));
    }
    let (body, sum) = file.split_at(file.len() - 8);
    let mut r = Reader { b: body, at: 8 };
    let version = r.u32()?;
    if version != STATE_VERSION {
        return Err(bad(format!(
            "{what} file version {version}, this build reads version {STATE_VERSION}"
        )));
    }
    if fnv(body).to_le_bytes() != sum {
        return Err(bad("checksum mismatch: the file is corrupt"));
    }
    Ok((body, r))
}

impl Memory {
    /// Serialises the memory, reading every cache buffer back from the backend.
    pub fn save(&self, be: &mut dyn Backend, model: &str) -> Result<Vec<u8>> {
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(MAGIC);
        w.u32(STATE_VERSION);
        w.u64(fingerprint(model, self));
        let cells = self.kv.raw();
        w.u64(cells.len() as u64);
        for (pos, seqs) in cells {
            w.u32(pos as u32);
            w.u64(seqs);
        }
        let slots = self.rec.raw();
        w.u64(slots.len() as u64);
        for s in slots {
            match s {
                Some((seq, len)) => {
                    w.u32(1);
                    w.u64(seq as u64);
                    w.u64(len as u64);
                }
                None => w.u32(0),
            }
        }
        for (seq, h) in self.history.iter().enumerate() {
            let bytes: Vec<u8> = h.iter().flat_map(|t| t.to_le_bytes()).collect();
            w.bytes(&bytes);
            let cps = self.checkpoints.of(seq);
            w.u64(cps.len() as u64);
            for cp in cps {
                w.u64(cp.pos as u64);
                w.u64(cp.rows.len() as u64);
                for r in &cp.rows {
                    w.bytes(r);
                }
            }
        }
        for b in &self.buffers {
            for buf in [b.k, b.v, b.conv, b.ssm].into_iter().flatten() {
                let mut data = vec![0u8; be.buffer_size(buf)?];
                be.download(buf, 0, &mut data)?;
                w.bytes(&data);
            }
        }
        let sum = fnv(&w.0);
        w.u64(sum);
        Ok(w.0)
    }

    /// Restores memory saved by [`Memory::save`] for the same model and sizes. On error the
    /// memory is unchanged (buffers are written only after everything has been checked).
    pub fn load(&mut self, be: &mut dyn Backend, model: &str, file: &[u8]) -> Result<()> {
        let (body, mut r) = open_file(file, MAGIC, "state")?;
        if r.u64()? != fingerprint(model, self) {
            return Err(bad(format!(
                "the state was saved for another model or another session size (this session: {model}, {} cells, {} sequences)",
                self.config.cells, self.config.sequences
            )));
        }
        let n = r.len()?;
        let mut cells = Vec::with_capacity(n.min(1 << 24));
        for _ in 0..n {
            cells.push((r.u32()? as i32, r.u64()?));
        }
        let n = r.len()?;
        let mut slots = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            slots.push(if r.u32()? == 1 {
                Some((r.u64()? as usize, r.u64()? as usize))
            } else {
                None
            });
        }
        let mut history = Vec::with_capacity(self.config.sequences);
        let mut checkpoints = Checkpoints::new(self.config.sequences, self.config.max_checkpoints);
        for seq in 0..self.config.sequences {
            let h = r.bytes()?;
            history.push(
                h.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
            for _ in 0..r.len()? {
                let pos = r.u64()? as usize;
                let rows = (0..r.len()?)
                    .map(|_| r.bytes())
                    .collect::<Result<Vec<_>>>()?;
                checkpoints.add(seq, Checkpoint { pos, rows });
            }
        }
        let mut data = vec![];
        for b in &self.buffers {
            for buf in [b.k, b.v, b.conv, b.ssm].into_iter().flatten() {
                let d = r.bytes()?;
                if d.len() != be.buffer_size(buf)? {
                    return Err(bad("a cache buffer has the wrong size"));
                }
                data.push((buf, d));
            }
        }
        if r.at != body.len() {
            return Err(bad("trailing bytes after the state"));
        }
        let kv = KvCells::from_raw(&cells, self.config.cells)
            .ok_or_else(|| bad("the KV cells do not fit this session"))?;
        let rec = RecurrentSlots::from_raw(&slots, self.config.sequences)
            .ok_or_else(|| bad("the state slots do not fit this session"))?;
        for (buf, d) in data {
            be.upload(buf, 0, &d)?;
        }
        self.kv = kv;
        self.rec = rec;
        self.history = history;
        self.checkpoints = checkpoints;
        Ok(())
    }
}

const SEQ_MAGIC: &[u8; 8] = b"WEFTSEQ1";

/// What a sequence file depends on: the model and the per-layer cache widths (not the session's
/// sizes: a sequence can move into a session with more cells or sequences).
fn seq_fingerprint(model: &str, mem: &Memory) -> u64 {
    fnv(format!("{model}|{:?}|{}", mem.layers, mem.config.kv_dtype).as_bytes())
}

impl Memory {
    /// One sequence as a file: its cells (positions and every attention layer's K/V rows), its
    /// recurrent rows, its token history and checkpoints.
    pub fn save_seq(
        &self,
        be: &mut dyn Backend,
        model: &str,
        seq: super::SeqId,
    ) -> Result<Vec<u8>> {
        if seq >= self.config.sequences {
            return Err(ModelError::UnknownSequence {
                seq,
                capacity: self.config.sequences,
            });
        }
        let eb = self.config.kv_dtype.block_bytes();
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(SEQ_MAGIC);
        w.u32(STATE_VERSION);
        w.u64(seq_fingerprint(model, self));
        let cells: Vec<(usize, i32)> = self.kv.cells_of(seq).collect();
        w.u64(cells.len() as u64);
        for &(c, pos) in &cells {
            w.u32(pos as u32);
            for (l, b) in self.layers.iter().zip(&self.buffers) {
                if let (Some(width), Some(k), Some(v)) = (l.kv_width(), b.k, b.v) {
                    for buf in [k, v] {
                        let mut row = vec![0u8; width * eb];
                        be.download(buf, c * width * eb, &mut row)?;
                        w.bytes(&row);
                    }
                }
            }
        }
        let slot = self.rec.slot_of(seq);
        w.u64(slot.map_or(0, |_| self.rec.len_of(seq)) as u64);
        w.u32(slot.is_some() as u32);
        if let Some(slot) = slot {
            for (l, b) in self.layers.iter().zip(&self.buffers) {
                if let (Some((conv, ssm)), Some(cb), Some(sb)) = (l.recurrent(), b.conv, b.ssm) {
                    for (buf, width) in [(cb, conv), (sb, ssm)] {
                        let mut row = vec![0u8; width * 4];
                        be.download(buf, slot * width * 4, &mut row)?;
                        w.bytes(&row);
                    }
                }
            }
        }
        let h: Vec<u8> = self.history[seq]
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect();
        w.bytes(&h);
        let cps = self.checkpoints.of(seq);
        w.u64(cps.len() as u64);
        for cp in cps {
            w.u64(cp.pos as u64);
            w.u64(cp.rows.len() as u64);
            for r in &cp.rows {
                w.bytes(r);
            }
        }
        let sum = fnv(&w.0);
        w.u64(sum);
        Ok(w.0)
    }

    /// Loads a sequence saved by [`Memory::save_seq`] as sequence `seq` (which must be empty),
    /// into free cells and a fresh state slot. On error nothing changes.
    pub fn load_seq(
        &mut self,
        be: &mut dyn Backend,
        model: &str,
        file: &[u8],
        seq: super::SeqId,
    ) -> Result<()> {
        if seq >= self.config.sequences {
            return Err(ModelError::UnknownSequence {
                seq,
                capacity: self.config.sequences,
            });
        }
        if self.seq_len(seq) > 0 {
            return Err(bad(format!("sequence {seq} is not empty: remove it first")));
        }
        let (body, mut r) = open_file(file, SEQ_MAGIC, "sequence")?;
        if r.u64()? != seq_fingerprint(model, self) {
            return Err(bad(format!(
                "the sequence was saved for another model ({model} here)"
            )));
        }
        let eb = self.config.kv_dtype.block_bytes();
        let n = r.len()?;
        let mut cells = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let pos = r.u32()? as i32;
            let mut rows = vec![];
            for (l, b) in self.layers.iter().zip(&self.buffers) {
                if let (Some(width), Some(k), Some(v)) = (l.kv_width(), b.k, b.v) {
                    for buf in [k, v] {
                        let row = r.bytes()?;
                        if row.len() != width * eb {
                            return Err(bad("a KV row has the wrong size"));
                        }
                        rows.push((buf, width, row));
                    }
                }
            }
            cells.push((pos, rows));
        }
        let len = r.u64()? as usize;
        let mut rec_rows = vec![];
        if r.u32()? == 1 {
            for (l, b) in self.layers.iter().zip(&self.buffers) {
                if let (Some((conv, ssm)), Some(cb), Some(sb)) = (l.recurrent(), b.conv, b.ssm) {
                    for (buf, width) in [(cb, conv), (sb, ssm)] {
                        let row = r.bytes()?;
                        if row.len() != width * 4 {
                            return Err(bad("a state row has the wrong size"));
                        }
                        rec_rows.push((buf, width, row));
                    }
                }
            }
        }
        let h = r.bytes()?;
        let history: Vec<i32> = h
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut cps = vec![];
        for _ in 0..r.len()? {
            let pos = r.u64()? as usize;
            let rows = (0..r.len()?)
                .map(|_| r.bytes())
                .collect::<Result<Vec<_>>>()?;
            cps.push(Checkpoint { pos, rows });
        }
        if r.at != body.len() {
            return Err(bad("trailing bytes after the sequence"));
        }
        // Place on copies, then write the device rows, then commit.
        let mut kv = self.kv.clone();
        let seq_of = vec![seq; cells.len()];
        let positions: Vec<i32> = cells.iter().map(|c| c.0).collect();
        let placed = kv.place(&seq_of, &positions)?;
        let mut rec = self.rec.clone();
        let slot = if rec_rows.is_empty() {
            None
        } else {
            let (s, _) = rec.assign(&[seq])?;
            rec.set_len(seq, len);
            Some(s[0])
        };
        for (cell, (_, rows)) in placed.iter().zip(&cells) {
            for (buf, width, row) in rows {
                be.upload(*buf, cell * width * eb, row)?;
            }
        }
        if let Some(slot) = slot {
            for (buf, width, row) in &rec_rows {
                be.upload(*buf, slot * width * 4, row)?;
            }
        }
        self.kv = kv;
        self.rec = rec;
        self.history[seq] = history;
        self.checkpoints.truncate(seq, None);
        for cp in cps {
            self.checkpoints.add(seq, cp);
        }
        Ok(())
    }
}
