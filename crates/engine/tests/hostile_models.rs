//! Models that must load and run, or be refused with an error naming the real cause: never a
//! panic, an abort, a hang or a silent wrong answer. Every file is generated here from the tiny
//! model of `common/tiny_model.rs` with one thing changed (no committed binaries); the malformed
//! GGUF structures are in `gguf_malformed.rs`.

mod common;

use common::gguf_writer::GgufWriter;
use common::tiny_model::{
    vocabulary, with_kv, with_tensor_values, without_kv, write, TinyModel, IM_END,
};
use engine::error::EngineError;
use engine::gguf::{Array, Value};
use engine::{ChatMessage, ChatOptions, Engine, EngineOptions, GenerationParams, SamplingParams};

fn options() -> EngineOptions {
    EngineOptions {
        context_len: 128,
        ..EngineOptions::default()
    }
}

/// Loads `w` from a file; the directory lives as long as the result.
fn load_with(
    w: &GgufWriter,
    opts: &EngineOptions,
) -> (tempfile::TempDir, Result<Engine, EngineError>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), "model.gguf", w);
    let engine = Engine::load(&path, opts);
    (dir, engine)
}

/// `w` must be refused, by [`engine::validate`] and by [`Engine::load`] alike, with an error whose
/// message contains every one of `needles`.
#[track_caller]
fn refused(w: GgufWriter, needles: &[&str]) -> EngineError {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), "model.gguf", &w);
    let validated = engine::validate(&path, &options());
    let loaded = Engine::load(&path, &options());
    let (Err(v), Err(e)) = (validated, loaded) else {
        panic!("a hostile model was accepted (expected an error with {needles:?})");
    };
    let msg = e.to_string();
    assert_eq!(v.to_string(), msg, "validate and load disagree");
    for needle in needles {
        assert!(msg.contains(needle), "error {msg:?} lacks {needle:?}");
    }
    e
}

fn greedy(n: usize) -> GenerationParams {
    GenerationParams {
        max_tokens: n,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::for_family(engine::ModelFamily::Llama)
        },
        stop_strings: Vec::new(),
        ignore_eos: true,
        start_in_thinking: false,
        max_thinking_tokens: None,
        speculative: engine::Speculative::Off,
    }
}

/// A chat prompt for `engine`.
fn prompt(engine: &Engine) -> Vec<u32> {
    let opts = ChatOptions {
        add_generation_prompt: true,
        ..ChatOptions::default()
    };
    let today = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    let text = engine
        .render_chat(&[ChatMessage::new("user", "Hello there")], &opts, today)
        .expect("render");
    engine.encode_prompt(&text).expect("encode")
}

/// `w` must load and generate; returns the teacher-forced logits of the prompt.
#[track_caller]
fn runs(w: GgufWriter) -> Vec<Vec<f32>> {
    let (_dir, engine) = load_with(&w, &options());
    let mut engine = engine.unwrap_or_else(|e| panic!("a valid model was refused: {e}"));
    let ids = prompt(&engine);
    let out = engine
        .generate(&ids, &greedy(6), &|| false, &mut |_| {})
        .unwrap_or_else(|e| panic!("generation failed: {e}"));
    assert_eq!(out.ids.len(), 6);
    let rows = engine.logits(&ids).expect("logits");
    assert!(rows.iter().flatten().all(|x| x.is_finite()));
    rows
}

fn key(k: &str) -> String {
    format!("llama.{k}")
}

// --- Valid shapes llama.cpp runs: they must run here. ---

#[test]
fn ffn_narrower_than_embedding_runs_for_both_archs() {
    // Panicked: model.rs reused `up` (t x n_ff) as the block output (t x dim).
    for arch in ["llama", "smollm3"] {
        let shape = TinyModel {
            arch,
            n_layer: 4,
            n_ff: 32,
            ..TinyModel::default()
        };
        runs(shape.writer());
    }
}

#[test]
fn head_shapes_llama_cpp_accepts_run() {
    let shapes = [
        // Odd head counts, grouped 3:1 and not grouped.
        (48, 3, 1, None),
        (48, 3, 3, None),
        // GQA 8:1, 4:1 and 2:1.
        (64, 8, 1, None),
        (64, 8, 2, None),
        (64, 8, 4, None),
        // Tiny heads: q is narrower than the embedding.
        (64, 4, 2, Some(2)),
        // Heads wider than the embedding (and a multiple of 64, the AVX-512 scores path).
        (64, 2, 1, Some(128)),
        (32, 1, 1, Some(64)),
    ];
    for (n_embd, n_head, n_head_kv, head_dim) in shapes {
        let shape = TinyModel {
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            ..TinyModel::default()
        };
        runs(shape.writer());
    }
}

#[test]
fn context_length_of_2_pow_31_loads_at_the_chosen_context() {
    let w = TinyModel {
        context_length: 1 << 31,
        ..TinyModel::default()
    }
    .writer();
    let (_dir, engine) = load_with(&w, &options());
    assert_eq!(engine.expect("loads").context_len(), 128);
}

#[test]
fn context_that_does_not_fit_in_memory_is_refused_before_allocating() {
    let w = TinyModel {
        context_length: u32::MAX,
        ..TinyModel::default()
    }
    .writer();
    let opts = EngineOptions {
        context_len: u32::MAX as usize,
        ..EngineOptions::default()
    };
    let (dir, engine) = load_with(&w, &opts);
    let e = engine.err().expect("refused");
    let msg = e.to_string();
    assert!(matches!(e, EngineError::InsufficientMemory { .. }), "{e:?}");
    assert!(msg.contains("available; lower the context"), "{msg}");
    // Import's validation leaves memory to the load (the model in use will be unloaded first).
    engine::validate(&dir.path().join("model.gguf"), &opts).expect("valid file");
}

// --- Hostile hyper-parameters: refused, naming the key. ---

#[test]
fn non_finite_or_non_positive_rms_epsilon_is_refused() {
    let k = key("attention.layer_norm_rms_epsilon");
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1e-5] {
        refused(
            with_kv(TinyModel::default().writer(), &k, Value::F32(v)),
            &[&k],
        );
    }
    refused(
        with_kv(TinyModel::default().writer(), &k, Value::F64(f64::NAN)),
        &[&k],
    );
    refused(without_kv(TinyModel::default().writer(), &k), &[&k]);
}

#[test]
fn non_finite_or_non_positive_rope_base_is_refused() {
    let k = key("rope.freq_base");
    for v in [f32::NAN, f32::INFINITY, 0.0, -10_000.0] {
        refused(
            with_kv(TinyModel::default().writer(), &k, Value::F32(v)),
            &[&k],
        );
    }
}

#[test]
fn hostile_rope_scaling_and_attention_scale_are_refused() {
    let linear = with_kv(
        TinyModel::default().writer(),
        &key("rope.scaling.type"),
        Value::Str("linear".into()),
    );
    let factor = key("rope.scaling.factor");
    for v in [f32::NAN, -2.0, f32::INFINITY] {
        refused(with_kv(linear.clone(), &factor, Value::F32(v)), &[&factor]);
    }
    refused(
        with_kv(linear, &key("rope.scaling.type"), Value::Str("yarn".into())),
        &["yarn"],
    );
    let scale = key("attention.scale");
    refused(
        with_kv(TinyModel::default().writer(), &scale, Value::F32(f32::NAN)),
        &[&scale],
    );
}

#[test]
fn zero_counts_are_refused() {
    for k in [
        "block_count",
        "embedding_length",
        "feed_forward_length",
        "context_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.key_length",
    ] {
        let k = key(k);
        refused(
            with_kv(TinyModel::default().writer(), &k, Value::U32(0)),
            &[&k, "is 0"],
        );
    }
}

#[test]
fn head_sizes_that_disagree_with_the_tensors_are_refused() {
    // Odd: no rotary embedding over it.
    let w = TinyModel::default().writer();
    refused(
        with_kv(w.clone(), &key("attention.key_length"), Value::U32(15)),
        &["even"],
    );
    // Absurd: the query projection would be 4 x 2^30 wide.
    refused(
        with_kv(w.clone(), &key("attention.key_length"), Value::U32(1 << 30)),
        &["blk.0.attn_q.weight", "metadata implies"],
    );
    // 4 query heads over 3 key/value heads.
    refused(
        with_kv(w.clone(), &key("attention.head_count_kv"), Value::U32(3)),
        &[&key("attention.head_count_kv")],
    );
    // Feed-forward and embedding widths that the tensors do not have.
    refused(
        with_kv(w.clone(), &key("feed_forward_length"), Value::U32(96)),
        &["ffn_gate", "metadata implies"],
    );
    refused(
        with_kv(w, &key("embedding_length"), Value::U32(96)),
        &["token_embd.weight", "metadata implies"],
    );
}

#[test]
fn block_counts_that_disagree_with_the_tensors_are_refused() {
    let k = key("block_count");
    for n in [1, 3, 1000, u32::MAX] {
        let w = with_kv(TinyModel::default().writer(), &k, Value::U32(n));
        refused(w, &[&k, "tensors for 2 blocks"]);
    }
    // A missing tensor in a block is named.
    let mut w = TinyModel::default().writer();
    w.tensors.retain(|t| t.name != "blk.1.ffn_down.weight");
    refused(w, &["blk.1.ffn_down.weight"]);
}

#[test]
fn unsupported_architectures_and_experts_are_refused() {
    let w = TinyModel::default().writer();
    refused(
        with_kv(w.clone(), "general.architecture", Value::Str("gpt2".into())),
        &["architecture 'gpt2'"],
    );
    refused(
        with_kv(w, &key("expert_count"), Value::U32(8)),
        &["mixture-of-experts"],
    );
}

// --- Hostile tokenizers. ---

#[test]
fn special_ids_outside_the_vocabulary() {
    let w = TinyModel::default().writer();
    for k in ["bos", "eos", "eot"] {
        let k = format!("tokenizer.ggml.{k}_token_id");
        refused(
            with_kv(w.clone(), &k, Value::U32(100_000)),
            &[&k, "outside the vocabulary"],
        );
    }
    // Padding is not used: ignored, as llama.cpp ignores it.
    runs(with_kv(
        w,
        "tokenizer.ggml.padding_token_id",
        Value::U32(100_000),
    ));
}

#[test]
fn empty_token_strings() {
    // Was: "invalid sampling settings: the prompt is empty" on the first message.
    let (tokens, _) = vocabulary();
    let empty = vec![String::new(); tokens.len()];
    let w = with_kv(
        TinyModel::default().writer(),
        "tokenizer.ggml.tokens",
        Value::Array(Array::Str(empty)),
    );
    refused(w, &["tokenizer", "empty strings"]);
    // A few empty tokens are renamed, as llama.cpp renames them, and the model runs.
    let mut some = tokens.clone();
    some[0] = String::new();
    some[1] = String::new();
    runs(with_kv(
        TinyModel::default().writer(),
        "tokenizer.ggml.tokens",
        Value::Array(Array::Str(some)),
    ));
}

#[test]
fn text_the_vocabulary_cannot_encode_is_an_error_naming_it() {
    // Only the control tokens have text: a prompt without them has no tokens at all.
    let (tokens, _) = vocabulary();
    let only_specials: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.starts_with("<|") {
                t.clone()
            } else {
                format!("[unused{i}]")
            }
        })
        .collect();
    let w = with_kv(
        TinyModel::default().writer(),
        "tokenizer.ggml.tokens",
        Value::Array(Array::Str(only_specials)),
    );
    let (_dir, engine) = load_with(&w, &options());
    let engine = engine.expect("loads");
    let e = engine.encode_prompt("plain words").unwrap_err();
    assert!(e.to_string().contains("encodes to no tokens"), "{e}");
    let mut engine = engine;
    let e = engine
        .generate(&[], &greedy(2), &|| false, &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, EngineError::EmptyPrompt), "{e:?}");
}

#[test]
fn token_type_arrays_of_the_wrong_length_or_type() {
    let (tokens, types) = vocabulary();
    let w = TinyModel::default().writer();
    let k = "tokenizer.ggml.token_type";
    let short = types[..tokens.len() - 1].to_vec();
    refused(
        with_kv(w.clone(), k, Value::Array(Array::I32(short))),
        &["token types"],
    );
    let strings = Value::Array(Array::Str(vec!["1".into(); tokens.len()]));
    refused(with_kv(w.clone(), k, strings), &[k]);
    // Longer: the extra codes are ignored (llama.cpp reads the first n). Extra control codes
    // past the vocabulary panicked the special-token index.
    let mut long = types.clone();
    long.extend([3, 3, 3]);
    runs(with_kv(w, k, Value::Array(Array::I32(long))));
}

#[test]
fn malformed_merges_are_ranked_and_ignored_as_llama_cpp_does() {
    let merges = ["", "x", " lead", "H e", "no-space", "l l"].map(String::from);
    let w = with_kv(
        TinyModel::default().writer(),
        "tokenizer.ggml.merges",
        Value::Array(Array::Str(merges.to_vec())),
    );
    runs(w.clone());
    refused(
        with_kv(w, "tokenizer.ggml.merges", Value::Str("H e".into())),
        &["tokenizer.ggml.merges"],
    );
}

#[test]
fn unknown_tokenizers_are_refused() {
    let w = TinyModel::default().writer();
    refused(
        with_kv(
            w.clone(),
            "tokenizer.ggml.pre",
            Value::Str("martian".into()),
        ),
        &["unknown pre-tokenizer 'martian'"],
    );
    refused(
        with_kv(
            w.clone(),
            "tokenizer.ggml.model",
            Value::Str("llama".into()),
        ),
        &["tokenizer model 'llama'"],
    );
    refused(
        with_kv(w, "tokenizer.ggml.tokens", Value::Array(Array::Str(vec![]))),
        &["vocabulary"],
    );
}

// --- Hostile chat templates: refused at load, with the template's own error. ---

#[test]
fn hostile_templates_are_refused_at_load() {
    let k = "tokenizer.chat_template";
    let cases = [
        // An endless loop (refused by `range`), a long one (out of fuel), a huge output.
        ("{% for i in range(10**9) %}x{% endfor %}", "range"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "fuel",
        ),
        (
            "{% for i in range(40000) %}{{ 'x' * 1000 }}{% endfor %}",
            "",
        ),
        ("{{ raise_exception('no chatting') }}", "no chatting"),
        ("{% for m in messages %}", "syntax"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", ""),
        // Was: loaded, then every answer failed with "the prompt has no tokens".
        (
            "{# nothing #}",
            "renders a one-message conversation as nothing",
        ),
        ("{{ '  ' }}\n", "only whitespace"),
        // A fixed text: every answer would ignore what was asked.
        (
            "You are a bot.{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "without the message's text",
        ),
    ];
    for (template, cause) in cases {
        let w = with_kv(
            TinyModel::default().writer(),
            k,
            Value::Str(template.into()),
        );
        let e = refused(w, &["chat template", cause]);
        assert!(matches!(e, EngineError::Template(_)), "{e:?}");
    }
}

#[test]
fn a_model_without_a_chat_template_chats_in_chatml_as_llama_cpp_does() {
    // llama.cpp's common_chat_templates_init falls back to ChatML when the file's template is
    // missing or empty. Was: an empty template loaded, then every answer failed with "the prompt
    // has no tokens"; a missing one failed every answer.
    let k = "tokenizer.chat_template";
    let files = [
        without_kv(TinyModel::default().writer(), k),
        with_kv(TinyModel::default().writer(), k, Value::Str(String::new())),
    ];
    for w in files {
        let (_dir, engine) = load_with(&w, &options());
        let engine = engine.expect("a model without a template loads");
        assert!(!engine.info().has_chat_template);
        assert!(!engine.info().supports_thinking);
        let opts = ChatOptions {
            add_generation_prompt: true,
            ..ChatOptions::default()
        };
        let today = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hello there"),
        ];
        let text = engine.render_chat(&messages, &opts, today).expect("render");
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
        );
        runs(w);
    }
    // The tiny model's own ChatML template is its own.
    let (_dir, engine) = load_with(&TinyModel::default().writer(), &options());
    assert!(engine.expect("loads").info().has_chat_template);
}

// --- Broken arithmetic: NaN logits are an error that says so. ---

#[test]
fn nan_producing_weights_are_an_error_not_an_empty_answer() {
    // Was: an empty answer with finish "stop".
    let shape = TinyModel::default();
    let nan_norm = vec![f32::NAN; shape.n_embd];
    let w = with_tensor_values(shape.writer(), "blk.1.ffn_norm.weight", &nan_norm);
    let (_dir, engine) = load_with(&w, &options());
    let mut engine = engine.expect("the file itself is well-formed");
    let ids = prompt(&engine);
    let e = engine
        .generate(&ids, &greedy(4), &|| false, &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, EngineError::NanLogits { .. }), "{e:?}");
    assert!(e.to_string().contains("NaN"), "{e}");
    let e = engine.logits(&ids).unwrap_err();
    assert!(matches!(e, EngineError::NanLogits { position: 0 }), "{e:?}");
    // Infinite embeddings reach NaN in the first norm (inf * 0).
    let vocab = engine.tokenizer().vocab_size();
    let inf = vec![f32::INFINITY; vocab * shape.n_embd];
    let w = with_tensor_values(shape.writer(), "token_embd.weight", &inf);
    let (_dir, engine) = load_with(&w, &options());
    let mut engine = engine.expect("loads");
    let ids = prompt(&engine);
    let e = engine
        .generate(&ids, &greedy(4), &|| false, &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, EngineError::NanLogits { .. }), "{e:?}");
}

#[test]
fn the_tiny_model_itself_is_valid_and_stops_at_its_end_token() {
    let (_dir, engine) = load_with(&TinyModel::default().writer(), &options());
    let engine = engine.expect("loads");
    assert_eq!(engine.tokenizer().token_id(IM_END), Some(257));
    assert!(engine.stop_tokens().contains(&257));
}
