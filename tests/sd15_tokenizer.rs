//! CLIP tokenizer: exact ids against transformers 5.24 (`input_ids`, what the SD pipeline
//! feeds the text encoder) for the 62 fixture prompts, with the tiny vocab and the real one.

mod sd15_common;

use std::path::Path;

use ddrep::models::sd15::ClipTokenizer;
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Compares every prompt and reports all mismatches at once.
fn check_all(tok: &ClipTokenizer, expected: &Path) {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(expected).unwrap()).unwrap();
    let prompts = doc["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 62);
    let mut bad = Vec::new();
    for p in prompts {
        let text = p["text"].as_str().unwrap();
        let got = tok.encode(text);
        let untrunc = tok.encode_untruncated(text);
        if got != ids(&p["input_ids"]) || untrunc != ids(&p["ids_untruncated"]) {
            bad.push(format!("{text:?}\n  got      {untrunc:?}\n  expected {:?}", ids(&p["ids_untruncated"])));
        }
        assert_eq!(got.len(), 77);
        assert_eq!(p["truncated"].as_bool().unwrap(), untrunc.len() > 77);
    }
    assert!(bad.is_empty(), "{} of {} prompts differ:\n{}", bad.len(), prompts.len(), bad.join("\n"));
}

#[test]
fn tiny_vocab_matches_transformers() {
    let tok = ClipTokenizer::from_dir(&sd15_common::model_dir().join("tokenizer")).unwrap();
    assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id, tok.max_len), (912, 913, 913, 77));
    check_all(&tok, &sd15_common::fixture("expected/tokens_tiny.json"));
}

#[test]
fn real_clip_vocab_matches_transformers() {
    let Some(shared) = std::env::var_os("DDREP_SHARED") else {
        println!("skipped: DDREP_SHARED not set");
        return;
    };
    // The real vocab is never copied into the repo: the folder only has vocab.json and
    // merges.txt, so the special tokens take CLIPTokenizer's defaults (as SD1.5's files say).
    let tok = ClipTokenizer::from_dir(&Path::new(&shared).join("clip")).unwrap();
    assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id), (49406, 49407, 49407));
    check_all(&tok, &sd15_common::fixture("expected/tokens_clip.json"));
}

#[test]
fn truncation_keeps_first_75_tokens_and_eos() {
    let tok = ClipTokenizer::from_dir(&sd15_common::model_dir().join("tokenizer")).unwrap();
    let long = "word ".repeat(200);
    let ids = tok.encode(&long);
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], tok.bos_id);
    assert_eq!(ids[76], tok.eos_id);
    assert_eq!(&ids[1..76], &tok.encode_untruncated(&long)[1..76]);
}
