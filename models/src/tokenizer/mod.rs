//! Tokenizers built from GGUF metadata: byte-level BPE (`tokenizer.ggml.model = gpt2`, with the
//! pre-tokenizer named by `tokenizer.ggml.pre`) and SentencePiece BPE (`llama`, with byte
//! fallback). Special tokens in the text are matched as single tokens the way llama.cpp does:
//! user-defined ones always, control ones when `parse_special` is set.

mod bpe;
mod pretokenize;
mod spm;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use pretokenize::PreTokenizer;
use std::collections::HashMap;

/// GGUF token types.
const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const BYTE: i64 = 6;

/// Options of [`Tokenizer::encode_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Add BOS/EOS as the model's metadata asks.
    pub add_special: bool,
    /// Match control tokens (such as `<|im_start|>`) written in the text.
    pub parse_special: bool,
}

#[derive(Debug)]
enum Kind {
    Bpe {
        ranks: HashMap<(String, String), usize>,
        pre: PreTokenizer,
        byte_char: Box<[char; 256]>,
        char_byte: HashMap<char, u8>,
    },
    Spm {
        scores: Vec<f32>,
        byte_tokens: Box<[Option<u32>; 256]>,
        add_space_prefix: bool,
    },
}

/// A tokenizer read from a model file.
#[derive(Debug)]
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<i64>,
    vocab: HashMap<String, u32>,
    kind: Kind,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    eog: Vec<u32>,
    /// Special tokens by decreasing length, for matching in text.
    specials: Vec<(String, u32, bool)>,
    warnings: Vec<String>,
}

fn err(file: &GgufFile, detail: String) -> ModelError {
    ModelError::Tokenizer {
        file: file.path().to_path_buf(),
        detail,
    }
}

impl Tokenizer {
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer> {
        let model = f.get_str("tokenizer.ggml.model")?.to_string();
        let tokens: Vec<String> = f
            .get_array("tokenizer.ggml.tokens")?
            .as_strings()
            .ok_or_else(|| err(f, "tokenizer.ggml.tokens is not an array of strings".into()))?
            .to_vec();
        let n = tokens.len();
        let types: Vec<i64> = match f.get_array_opt("tokenizer.ggml.token_type")? {
            Some(a) => a.to_i64s().ok_or_else(|| {
                err(
                    f,
                    "tokenizer.ggml.token_type is not an integer array".into(),
                )
            })?,
            None => vec![NORMAL; n],
        };
        if types.len() != n {
            return Err(err(
                f,
                format!("{} token types for {n} tokens", types.len()),
            ));
        }
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let id = |key: &str| -> Result<Option<u32>> {
            match f.get_u32_opt(key)? {
                Some(v) if (v as usize) < n => Ok(Some(v)),
                Some(v) => Err(err(
                    f,
                    format!("{key} = {v} is outside the vocabulary of {n}"),
                )),
                None => Ok(None),
            }
        };
        let (bos, eos) = (
            id("tokenizer.ggml.bos_token_id")?,
            id("tokenizer.ggml.eos_token_id")?,
        );
        let mut warnings = vec![];
        let kind = match model.as_str() {
            "gpt2" => {
                let merges = f
                    .get_array("tokenizer.ggml.merges")?
                    .as_strings()
                    .ok_or_else(|| {
                        err(f, "tokenizer.ggml.merges is not an array of strings".into())
                    })?;
                let mut ranks = HashMap::with_capacity(merges.len());
                for (r, m) in merges.iter().enumerate() {
                    let (a, b) = m
                        .split_once(' ')
                        .ok_or_else(|| err(f, format!("merge {r} ({m:?}) is not two pieces")))?;
                    ranks.entry((a.to_string(), b.to_string())).or_insert(r);
                }
                let pre_name = f
                    .get_str_opt("tokenizer.ggml.pre")?
                    .unwrap_or("default")
                    .to_string();
                let (exprs, known) = pretokenize::patterns(&pre_name);
                if !known {
                    warnings.push(format!("unknown pre-tokenizer {pre_name:?}; using GPT-2's"));
                }
                let pre = PreTokenizer::new(&exprs)
                    .map_err(|e| err(f, format!("pre-tokenizer {pre_name}: {e}")))?;
                let byte_char = Box::new(bpe::byte_to_char());
                let char_byte = byte_char
                    .iter()
                    .enumerate()
                    .map(|(b, &c)| (c, b as u8))
                    .collect();
                Kind::Bpe {
                    ranks,
                    pre,
                    byte_char,
                    char_byte,
                }
            }
            "llama" => {
                let scores = match f.get_array_opt("tokenizer.ggml.scores")? {
                    Some(a) => a
                        .as_f32s()
                        .ok_or_else(|| err(f, "tokenizer.ggml.scores is not an f32 array".into()))?
                        .to_vec(),
                    None => vec![0.0; n],
                };
                let mut byte_tokens = Box::new([None; 256]);
                for (i, t) in tokens.iter().enumerate() {
                    if types[i] == BYTE
                        && let Some(hex) = t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>'))
                        && let Ok(b) = u8::from_str_radix(hex, 16)
                    {
                        byte_tokens[b as usize] = Some(i as u32);
                    }
                }
                let add_space_prefix = f
                    .get_bool_opt("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true);
                Kind::Spm {
                    scores,
                    byte_tokens,
                    add_space_prefix,
                }
            }
            other => {
                return Err(err(
                    f,
                    format!("tokenizer model {other:?} is not supported (gpt2, llama)"),
                ));
            }
        };
        let is_spm = matches!(kind, Kind::Spm { .. });
        let add_bos = f
            .get_bool_opt("tokenizer.ggml.add_bos_token")?
            .unwrap_or(is_spm);
        let add_eos = f
            .get_bool_opt("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        let eog_names = [
            "<|endoftext|>",
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<end_of_turn>",
            "<|end_of_text|>",
            "</s>",
            "<|return|>",
        ];
        let mut eog: Vec<u32> = eos.into_iter().collect();
        for (i, t) in tokens.iter().enumerate() {
            if types[i] == CONTROL && eog_names.contains(&t.as_str()) && !eog.contains(&(i as u32))
            {
                eog.push(i as u32);
            }
        }
        let mut specials: Vec<(String, u32, bool)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| (types[*i] == CONTROL || types[*i] == USER_DEFINED) && !t.is_empty())
            .map(|(i, t)| (t.clone(), i as u32, types[i] == CONTROL))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Tokenizer {
            tokens,
            types,
            vocab,
            kind,
            bos,
            eos,
            add_bos,
            add_eos,
            eog,
            specials,
            warnings,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// True for tokens that end generation (EOS and end-of-turn control tokens).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }
    /// Problems noticed while loading (e.g. an unknown pre-tokenizer name).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// `encode_with(text, { add_special, parse_special: false })`.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.encode_with(
            text,
            EncodeOptions {
                add_special,
                parse_special: false,
            },
        )
    }

    pub fn encode_with(&self, text: &str, opts: EncodeOptions) -> Vec<u32> {
        let mut out = vec![];
        if opts.add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut first = true;
        for (piece, special) in self.partition(text, opts.parse_special) {
            match special {
                Some(id) => out.push(id),
                None => self.encode_plain(piece, first, &mut out),
            }
            first = false;
        }
        if opts.add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Splits text around special tokens (user-defined always, control with `parse_special`).
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<(&'t str, Option<u32>)> {
        let mut out = vec![];
        let mut rest = text;
        'outer: while !rest.is_empty() {
            // earliest match; at one position the longest special wins (the list is sorted so)
            let mut best: Option<(usize, &str, u32)> = None;
            for (s, id, control) in &self.specials {
                if *control && !parse_special {
                    continue;
                }
                if let Some(at) = rest.find(s.as_str())
                    && best.is_none_or(|(b, bs, _)| at < b || (at == b && s.len() > bs.len()))
                {
                    best = Some((at, s, *id));
                }
            }
            match best {
                Some((at, s, id)) => {
                    if at > 0 {
                        out.push((&rest[..at], None));
                    }
                    out.push((&rest[at..at + s.len()], Some(id)));
                    rest = &rest[at + s.len()..];
                }
                None => {
                    out.push((rest, None));
                    break 'outer;
                }
            }
        }
        out
    }

    fn encode_plain(&self, text: &str, first: bool, out: &mut Vec<u32>) {
        match &self.kind {
            Kind::Bpe {
                ranks,
                pre,
                byte_char,
                ..
            } => {
                for piece in pre.split(text) {
                    let mapped: String = piece.bytes().map(|b| byte_char[b as usize]).collect();
                    bpe::merge(&mapped, ranks, &self.vocab, out);
                }
            }
            Kind::Spm {
                scores,
                byte_tokens,
                add_space_prefix,
            } => {
                let mut t = String::with_capacity(text.len() + 3);
                if *add_space_prefix && first {
                    t.push(' ');
                }
                t.push_str(text);
                let t = t.replace(' ', "\u{2581}");
                spm::encode(&t, &self.vocab, scores, byte_tokens, out);
            }
        }
    }

    /// The bytes one token stands for (control tokens: none). Bytes of one character may be
    /// split across tokens: a streamer buffers until they form valid UTF-8.
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return vec![];
        };
        let ty = self.types[id as usize];
        if ty == CONTROL {
            return vec![];
        }
        match &self.kind {
            Kind::Bpe { char_byte, .. } => {
                if ty == USER_DEFINED {
                    return t.as_bytes().to_vec();
                }
                t.chars()
                    .map(|c| char_byte.get(&c).copied().unwrap_or(b'?'))
                    .collect()
            }
            Kind::Spm { .. } => {
                if ty == BYTE
                    && let Some(b) = t
                        .strip_prefix("<0x")
                        .and_then(|h| h.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    return vec![b];
                }
                t.replace('\u{2581}', " ").into_bytes()
            }
        }
    }

    /// Text of a token sequence (invalid UTF-8 is replaced only where it really is invalid).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.token_to_piece(i)).collect();
        let s = String::from_utf8_lossy(&bytes).into_owned();
        match &self.kind {
            // SentencePiece's prefix space is not part of the text
            Kind::Spm {
                add_space_prefix: true,
                ..
            } => s.strip_prefix(' ').map(str::to_string).unwrap_or(s),
            _ => s,
        }
    }
}
