//! CLIP byte-level BPE tokenizer, read from a diffusers `tokenizer/` folder
//! (`vocab.json`, `merges.txt`, `special_tokens_map.json`, `tokenizer_config.json`).
//!
//! Our own implementation (no `tokenizers` crate): the algorithm is small, builds offline
//! without C code, and matches transformers 5.24 exactly on the fixture prompts.
//!
//! Reference behaviour: transformers 5.24's `CLIPTokenizer` (the tokenizers-backed class,
//! what current diffusers runs): NFC, `\s+` -> `' '`, per-character lowercase, split with
//! CLIP's regex, byte-level symbols, BPE with a `</w>` end-of-word suffix. We match it rather
//! than the legacy slow tokenizer (transformers < 5): the legacy output depended on whether
//! `ftfy` happened to be installed, and differs only on control/format characters and CJK
//! ideographs (6 of the 62 fixture prompts), which SD prompts rarely contain.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

/// CLIP's pre-tokenizer pattern: contractions, letter runs, single digits, other runs.
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const END_OF_WORD: &str = "</w>";

pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_chars: [char; 256],
    split: Regex,
    whitespace: Regex,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    pub unk_id: u32,
    /// Length every encoded prompt is truncated and padded to (77 for SD1.5).
    pub max_len: usize,
}

/// GPT-2's reversible byte -> printable character map.
fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap()
        };
    }
    out
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}: restore it from the model download", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not valid JSON ({e}): restore the file from the model download", path.display()))
}

/// A special token entry is either a string or an AddedToken object with `content`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Loads a diffusers `tokenizer/` folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let vocab_path = dir.join("vocab.json");
        let vocab: HashMap<String, u32> = serde_json::from_value(read_json(&vocab_path)?).map_err(|e| {
            anyhow!("{} is not a token -> id map ({e}): restore the file from the model download", vocab_path.display())
        })?;
        let merges_path = dir.join("merges.txt");
        let merges = std::fs::read_to_string(&merges_path)
            .with_context(|| format!("cannot read {}: restore it from the model download", merges_path.display()))?;
        let mut ranks = HashMap::new();
        for (i, line) in merges.lines().filter(|l| !l.starts_with("#version") && !l.is_empty()).enumerate() {
            let Some((a, b)) = line.split_once(' ') else {
                bail!(
                    "{}: line {:?} is not a merge 'a b': restore the file from the model download",
                    merges_path.display(),
                    line
                );
            };
            ranks.entry((a.to_string(), b.to_string())).or_insert(i);
        }
        // Without merges every word falls apart into characters: a truncated or emptied file.
        if ranks.is_empty() {
            bail!("{} holds no merges (CLIP's has 48894): restore the file from the model download", merges_path.display());
        }

        // special_tokens_map.json wins over tokenizer_config.json, as in transformers.
        let mut special: HashMap<String, String> = HashMap::new();
        let mut max_len = 77usize;
        for file in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(file);
            if !path.exists() {
                continue;
            }
            let v = read_json(&path)?;
            for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                if let Some(s) = v.get(key).and_then(token_content) {
                    special.insert(key.to_string(), s);
                }
            }
            if let Some(n) = v.get("model_max_length").and_then(Value::as_f64) {
                // Some configs store a huge sentinel for "no limit"; keep CLIP's 77 then.
                if (2.0..=4096.0).contains(&n) {
                    max_len = n as usize;
                }
            }
        }
        let id = |key: &str, default: &str| -> Result<u32> {
            let tok = special.get(key).map(String::as_str).unwrap_or(default);
            vocab.get(tok).copied().ok_or_else(|| {
                anyhow!("{}: {key} {tok:?} is not in vocab.json: use the tokenizer files of one model", dir.display())
            })
        };
        Ok(Self {
            bos_id: id("bos_token", "<|startoftext|>")?,
            eos_id: id("eos_token", "<|endoftext|>")?,
            // CLIPTokenizer's default pad is <|endoftext|> (SD1.5); SD2 folders say "!".
            pad_id: id("pad_token", "<|endoftext|>")?,
            unk_id: id("unk_token", "<|endoftext|>")?,
            vocab,
            ranks,
            byte_chars: bytes_to_unicode(),
            split: Regex::new(PATTERN).expect("valid CLIP pattern"),
            whitespace: Regex::new(r"\s+").expect("valid pattern"),
            max_len,
        })
    }

    /// NFC, whitespace runs to one space, lowercase per character (no final-sigma rule).
    pub fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().collect();
        let spaced = self.whitespace.replace_all(&nfc, " ");
        spaced.chars().flat_map(char::to_lowercase).collect()
    }

    /// BPE of one pre-token, given as its byte-level characters.
    fn bpe(&self, word: &str) -> Vec<String> {
        let chars: Vec<char> = word.chars().collect();
        let mut parts: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str(END_OF_WORD);
        }
        while parts.len() > 1 {
            // The adjacent pair with the lowest merge rank; merge all its occurrences.
            let best = (0..parts.len() - 1)
                .filter_map(|i| self.ranks.get(&(parts[i].clone(), parts[i + 1].clone())).map(|&r| (r, i)))
                .min();
            let Some((_, i0)) = best else { break };
            let (a, b) = (parts[i0].clone(), parts[i0 + 1].clone());
            let mut merged = Vec::with_capacity(parts.len());
            let mut i = 0;
            while i < parts.len() {
                if i + 1 < parts.len() && parts[i] == a && parts[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut parts[i]));
                    i += 1;
                }
            }
            parts = merged;
        }
        parts
    }

    /// Token ids of `text` without start/end tokens, truncation or padding.
    pub fn tokens(&self, text: &str) -> Vec<u32> {
        let norm = self.normalize(text);
        let mut ids = Vec::new();
        for m in self.split.find_iter(&norm) {
            let word: String = m.as_str().bytes().map(|b| self.byte_chars[b as usize]).collect();
            for piece in self.bpe(&word) {
                ids.push(self.vocab.get(&piece).copied().unwrap_or(self.unk_id));
            }
        }
        ids
    }

    /// `[bos, tokens..., eos]` with no length limit.
    pub fn encode_untruncated(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos_id];
        ids.extend(self.tokens(text));
        ids.push(self.eos_id);
        ids
    }

    /// What the SD pipeline feeds the text encoder: `[bos, first max_len-2 tokens, eos]`,
    /// padded with the pad id to `max_len`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos_id];
        ids.extend(self.tokens(text).into_iter().take(self.max_len - 2));
        ids.push(self.eos_id);
        ids.resize(self.max_len, self.pad_id);
        ids
    }
}
