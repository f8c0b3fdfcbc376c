//! Byte-level BPE (GPT-2 style): bytes map to printable characters, pre-tokenized pieces are
//! merged pair by pair in merge-rank order.

use std::collections::HashMap;

/// GPT-2's reversible map from bytes to printable unicode characters.
pub fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('?')
        };
    }
    map
}

/// Merges a piece (already mapped to characters) into vocabulary tokens.
pub fn merge(
    piece: &str,
    ranks: &HashMap<(String, String), usize>,
    vocab: &HashMap<String, u32>,
    out: &mut Vec<u32>,
) {
    if let Some(&id) = vocab.get(piece) {
        out.push(id);
        return;
    }
    let mut syms: Vec<String> = piece.chars().map(String::from).collect();
    loop {
        let mut best: Option<(usize, usize)> = None;
        for i in 0..syms.len().saturating_sub(1) {
            if let Some(&r) = ranks.get(&(syms[i].clone(), syms[i + 1].clone()))
                && best.is_none_or(|(br, _)| r < br)
            {
                best = Some((r, i));
            }
        }
        let Some((_, i)) = best else { break };
        let right = syms.remove(i + 1);
        syms[i].push_str(&right);
    }
    for s in syms {
        match vocab.get(&s) {
            Some(&id) => out.push(id),
            // a symbol outside the vocabulary: fall back to its characters one by one
            None => out.extend(s.chars().filter_map(|c| vocab.get(&c.to_string()).copied())),
        }
    }
}
