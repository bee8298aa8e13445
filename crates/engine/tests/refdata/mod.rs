//! Paths and the shape of llama.cpp's reference outputs (`shared/reference/*.llamacpp.json`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `shared/reference/`, beside the repository.
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference")
}

/// The default model, fetched by `models/fetch.sh`.
pub fn smollm2_path() -> PathBuf {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run models/fetch.sh (make test does)",
        p.display()
    );
    p
}

#[derive(Deserialize)]
pub struct Reference {
    pub tokenize: Vec<TokenizeCase>,
    pub sequences: Vec<Sequence>,
    pub greedy: Vec<Greedy>,
}

#[derive(Deserialize)]
pub struct TokenizeCase {
    pub text: String,
    pub parse_special: bool,
    pub ids: Vec<u32>,
}

#[derive(Deserialize)]
pub struct Sequence {
    pub name: String,
    pub tokens: Vec<u32>,
    pub positions: Vec<Position>,
}

#[derive(Deserialize)]
pub struct Position {
    pub argmax: u32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Deserialize)]
pub struct Greedy {
    pub name: String,
    pub prompt_tokens: Vec<u32>,
    pub generated: Vec<u32>,
}

impl Reference {
    pub fn load(path: &Path) -> Self {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}
