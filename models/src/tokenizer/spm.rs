//! SentencePiece BPE (llama.cpp's `llm_tokenizer_spm`): spaces become `▁`, characters are
//! merged greedily by the score of the merged piece, and characters missing from the vocabulary
//! fall back to byte tokens `<0xXX>`.

use std::collections::{BinaryHeap, HashMap};

#[derive(Clone, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    size: usize,
}

impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    // highest score first, then the leftmost pair
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

pub fn encode(
    text: &str,
    vocab: &HashMap<String, u32>,
    scores: &[f32],
    byte_tokens: &[Option<u32>; 256],
    out: &mut Vec<u32>,
) {
    if text.is_empty() {
        return;
    }
    let mut syms: Vec<Symbol> = Vec::new();
    for (i, (start, c)) in text.char_indices().enumerate() {
        syms.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: Some(i + 1),
        });
    }
    if let Some(last) = syms.last_mut() {
        last.next = None;
    }
    let mut heap = BinaryHeap::new();
    let try_pair = |heap: &mut BinaryHeap<Bigram>, syms: &[Symbol], l: usize, r: usize| {
        let piece = &text[syms[l].start..syms[r].start + syms[r].len];
        if let Some(&id) = vocab.get(piece) {
            heap.push(Bigram {
                score: scores.get(id as usize).copied().unwrap_or(0.0),
                left: l,
                size: piece.len(),
            });
        }
    };
    for i in 1..syms.len() {
        try_pair(&mut heap, &syms, i - 1, i);
    }
    while let Some(b) = heap.pop() {
        let l = b.left;
        let Some(r) = syms[l].next else { continue };
        // stale: one side changed since the pair was queued
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.size {
            continue;
        }
        syms[l].len += syms[r].len;
        syms[r].len = 0;
        syms[l].next = syms[r].next;
        if let Some(n) = syms[r].next {
            syms[n].prev = Some(l);
        }
        if let Some(p) = syms[l].prev {
            try_pair(&mut heap, &syms, p, l);
        }
        if let Some(n) = syms[l].next {
            try_pair(&mut heap, &syms, l, n);
        }
    }
    let mut i = Some(0);
    while let Some(k) = i {
        let s = &syms[k];
        let piece = &text[s.start..s.start + s.len];
        match vocab.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| byte_tokens[b as usize])),
        }
        i = s.next;
    }
}
