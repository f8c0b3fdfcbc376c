//! Pre-tokenizers of byte-level BPE models: the regular expressions llama.cpp applies for each
//! `tokenizer.ggml.pre` name, one after another (each splits the pieces of the previous one).

use fancy_regex::Regex;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DIGITS: &str = r"\p{N}";

/// The expressions for a pre-tokenizer name, and whether the name was known.
pub fn patterns(pre: &str) -> (Vec<&'static str>, bool) {
    match pre {
        "default" | "gpt-2" | "gpt2" => (vec![GPT2], true),
        "smollm" | "starcoder" | "refact" | "codeshell" => (vec![DIGITS, GPT2], true),
        "llama3" | "llama-bpe" | "llama-v3" | "falcon3" | "pixtral" | "lfm2" => {
            (vec![LLAMA3], true)
        }
        "qwen2" | "qwen35" | "deepseek-r1-qwen" | "granite-docling" => (vec![QWEN2], true),
        _ => (vec![GPT2], false),
    }
}

/// Splits `text` with each expression in turn.
#[derive(Debug)]
pub struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    pub fn new(exprs: &[&str]) -> Result<PreTokenizer, fancy_regex::Error> {
        Ok(PreTokenizer {
            regexes: exprs
                .iter()
                .map(|e| Regex::new(e))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len());
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p).flatten() {
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }
}
