//! [`Engine`]: a loaded model with its tokenizer and chat template, ready to chat.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::Mmap;
use serde::Serialize;

use crate::attention::KvType;
use crate::backend::{Backend, Logits, Session};
use crate::candle_model::CandleModel;
use crate::config::ModelConfig;
use crate::device::{BackendKind, Placement};
use crate::error::{EngineError, Result};
use crate::generate::{self, GenerationEvent, GenerationOutput, GenerationParams};
use crate::gguf::{Gguf, GgufError};
use crate::kept::KeptCaches;
use crate::memory::{self, MemoryEstimate};
use crate::model::Model;
use crate::runner::{RunnerBackend, RunnerTimeouts};
use crate::sampler::SamplingParams;
use crate::template::{ChatMessage, ChatOptions, ChatTemplate};
use crate::tokenizer::Tokenizer;

/// Context length used when the caller does not choose one (capped by the model's own).
pub const DEFAULT_CONTEXT_LEN: usize = 8192;

/// Load-time choices.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// KV cache size in tokens; capped at the model's trained context length.
    pub context_len: usize,
    /// A Hugging Face `tokenizer.json` to use instead of the GGUF's vocabulary.
    pub tokenizer_json: Option<PathBuf>,
    /// The KV cache's element type: F16 (half the memory, llama.cpp's default) or F32 (exact).
    pub kv_type: KvType,
    /// The device and backend the model runs on.
    pub placement: Placement,
    /// Runs the model in this runner program (see [`crate::runner`]) instead of in this
    /// process. `None`: in this process, except a CUDA device in a build without CUDA, which
    /// runs in the runner next to the executable ([`crate::runner::default_path`]).
    pub runner: Option<PathBuf>,
    /// How long a runner may take to answer before it is taken for hung and stopped.
    pub runner_timeouts: RunnerTimeouts,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            context_len: DEFAULT_CONTEXT_LEN,
            tokenizer_json: None,
            kv_type: KvType::default(),
            placement: Placement::default(),
            runner: None,
            runner_timeouts: RunnerTimeouts::default(),
        }
    }
}

/// A summary of a loaded model (for `inspect` and `/model`).
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub file_bytes: u64,
    pub config: ModelConfig,
    pub vocab_size: usize,
    pub tensor_count: usize,
    /// (type name, tensor count) over the matrices.
    pub weight_types: Vec<(String, usize)>,
    /// The file has its own chat template; without one (or with an empty one) ChatML is used,
    /// as llama.cpp does ([`crate::template::CHATML_TEMPLATE`]).
    pub has_chat_template: bool,
    /// The chat template has a thinking mode (SmolLM3's `enable_thinking`, `/think`, `/no_think`).
    pub supports_thinking: bool,
    /// The chat template shows tools to the model ([`ChatTemplate::supports_tools`]): only then
    /// are they offered.
    pub supports_tools: bool,
    pub nope_layers: Vec<usize>,
    pub context_len: usize,
    /// The KV cache's element type.
    pub kv_type: KvType,
    /// Where it runs: `cpu (native backend)`, `cuda:0 (candle backend)`.
    pub placement: String,
    /// What the model was estimated to need at `context_len`, checked before loading.
    pub memory: MemoryEstimate,
    pub load_ms: f64,
}

/// A model ready to run: weights, tokenizer, template and KV cache.
pub struct Engine {
    session: Session,
    /// The conversation the live cache belongs to ([`Engine::use_cache_of`]).
    live: Option<String>,
    /// Other conversations' caches, copied out (see [`crate::kept`]).
    kept: KeptCaches,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_tokens: Vec<u32>,
    info: ModelInfo,
}

fn gguf_err(path: &Path) -> impl Fn(GgufError) -> EngineError + '_ {
    move |error| EngineError::Gguf {
        path: path.to_owned(),
        error,
    }
}

fn load_tokenizer(gguf: &Gguf, opts: &EngineOptions) -> Result<Tokenizer> {
    let Some(path) = &opts.tokenizer_json else {
        return Tokenizer::from_gguf(gguf);
    };
    let json = std::fs::read_to_string(path).map_err(|error| EngineError::Io {
        path: path.clone(),
        error,
    })?;
    Tokenizer::from_tokenizer_json_for(gguf, &json)
}

/// A model file checked up to its weights: metadata, tokenizer, template and the memory it
/// needs. What [`Engine::load`] builds the model from, and all [`validate`] reads.
struct Checked {
    map: Arc<Mmap>,
    gguf: Gguf,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    has_chat_template: bool,
    supports_thinking: bool,
    context_len: usize,
    memory: MemoryEstimate,
}

impl Checked {
    /// Maps and parses `path` and validates everything but the weights' values. Never panics on
    /// a bad file and allocates nothing sized by it beyond the parsed metadata.
    fn new(path: &Path, opts: &EngineOptions) -> Result<Self> {
        let (map, gguf, cfg) = map_model(path)?;
        let tokenizer = load_tokenizer(&gguf, opts)?;
        if tokenizer.vocab_size() != cfg.n_vocab {
            return Err(EngineError::InvalidModel(format!(
                "the tokenizer has {} tokens but the embedding matrix has {} rows",
                tokenizer.vocab_size(),
                cfg.n_vocab
            )));
        }
        // The template, and whether it has a thinking mode (SmolLM3's `enable_thinking`). A file
        // without one (or with an empty one) gets ChatML, as in llama.cpp.
        let own = match gguf.opt_str("tokenizer.chat_template") {
            Ok(src) => src.filter(|src| !src.is_empty()),
            Err(e) => return Err(EngineError::Template(e.to_string())),
        };
        let piece = |id: Option<u32>| {
            id.map(|i| String::from_utf8_lossy(tokenizer.token_bytes(i)).into_owned())
                .unwrap_or_default()
        };
        let s = tokenizer.special();
        let template = ChatTemplate::new(
            own.unwrap_or(crate::template::CHATML_TEMPLATE),
            &piece(s.bos),
            &piece(s.eos),
        )?;
        template.probe()?;
        let supports_thinking = own.is_some_and(|src| src.contains("enable_thinking"));
        let has_chat_template = own.is_some();
        let context_len = opts.context_len.clamp(1, cfg.context_length);
        let memory = match opts.placement.backend() {
            BackendKind::Native => MemoryEstimate::new(
                &cfg,
                gguf.tensors.iter().map(|t| t.n_bytes).sum(),
                gguf.data_offset,
                context_len,
                opts.kv_type,
                crate::threads::current(),
            )?,
            BackendKind::Candle => {
                let elems = |t: &crate::gguf::TensorInfo| t.dims.iter().product::<u64>();
                let tied = match gguf.tensor("output.weight") {
                    Some(_) => None,
                    None => gguf
                        .tensor("token_embd.weight")
                        .map(|t| (t.dtype, elems(t))),
                };
                // On Candle's CPU device the matrices are the native ones (as stored).
                let weights = match opts.placement.device() {
                    crate::DeviceSpec::Cpu => gguf.tensors.iter().map(|t| t.n_bytes).sum(),
                    _ => memory::candle_weight_bytes(
                        gguf.tensors.iter().map(|t| (t.dtype, elems(t), t.n_bytes)),
                        tied,
                    )?,
                };
                MemoryEstimate::for_candle(
                    &cfg,
                    weights,
                    gguf.data_offset,
                    context_len,
                    opts.kv_type,
                )?
            }
        };
        Ok(Self {
            map,
            gguf,
            cfg,
            tokenizer,
            template,
            has_chat_template,
            supports_thinking,
            context_len,
            memory,
        })
    }
}

/// Maps `path` and parses its GGUF structure and model configuration: the first step of every
/// load, in this process or in a runner.
pub(crate) fn map_model(path: &Path) -> Result<(Arc<Mmap>, Gguf, ModelConfig)> {
    let io_err = |error| EngineError::Io {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    // SAFETY: the map is read-only; a model file changed underneath a running app is outside
    // what we can defend against (as for every mmap-based loader, llama.cpp included).
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io_err)?);
    let gguf = Gguf::parse(&map).map_err(gguf_err(path))?;
    let cfg = ModelConfig::from_gguf(&gguf)?;
    Ok((map, gguf, cfg))
}

/// Refuses a model whose estimate exceeds the memory `available` on `device`; where that
/// cannot be told, loads it with a warning.
pub(crate) fn check_fits(
    memory: &MemoryEstimate,
    available: Option<memory::Available>,
    device: crate::DeviceSpec,
) -> Result<()> {
    match available {
        Some(available) => memory.check(&available),
        None => {
            tracing::warn!(
                needed = %memory::gb(memory.total()),
                %device,
                "cannot tell the available memory of this device: the model's need is not checked"
            );
            Ok(())
        }
    }
}

/// Checks a model file as [`Engine::load`] would (GGUF structure, metadata, tensor shapes,
/// tokenizer, chat template) without reading its weights or allocating the model: for vetting a
/// file while another model is loaded. The memory check is left to the load, when the memory in
/// use is known. Returns the model's configuration.
pub fn validate(path: &Path, opts: &EngineOptions) -> Result<ModelConfig> {
    Ok(Checked::new(path, opts)?.cfg)
}

/// The memory `path` needs with `opts` (its context, KV cache type and placement), as
/// [`Engine::load`] estimates it before loading, without reading the weights: for telling which
/// devices have room for the model before choosing one.
pub fn estimate_memory(path: &Path, opts: &EngineOptions) -> Result<MemoryEstimate> {
    Ok(Checked::new(path, opts)?.memory)
}

impl Engine {
    /// Memory-maps and validates `path`, checks that the model fits in the available memory at
    /// the chosen context, then builds the model. Never panics on a bad file.
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Self> {
        let start = Instant::now();
        let Checked {
            map,
            gguf,
            cfg,
            tokenizer,
            template,
            has_chat_template,
            supports_thinking,
            context_len,
            memory,
        } = Checked::new(path, opts)?;
        let placement = opts.placement;
        let runner = opts.runner.clone().or_else(|| {
            // A CUDA device in a build without CUDA runs in the CUDA runner (crate::runner).
            let cuda = matches!(placement.device(), crate::DeviceSpec::Cuda(_));
            (cuda && !cfg!(feature = "cuda")).then(crate::runner::default_path)
        });
        let model: Box<dyn Backend> = match runner {
            Some(_) if placement.backend() == BackendKind::Native => {
                return Err(EngineError::Device(
                    "a runner serves the candle backend only; choose --backend candle".into(),
                ))
            }
            Some(runner) => Box::new(RunnerBackend::start(
                &runner,
                path,
                placement.device(),
                context_len,
                opts.kv_type,
                &memory,
                opts.runner_timeouts,
            )?),
            None => {
                // The device is opened first: its memory is what the estimate is checked against.
                let device = match placement.backend() {
                    BackendKind::Native => None,
                    BackendKind::Candle => Some(placement.candle_device()?),
                };
                let available = match &device {
                    None => memory::host_available(),
                    Some(d) => crate::device::available_memory(placement.device(), d),
                };
                check_fits(&memory, available, placement.device())?;
                match &device {
                    None => Box::new(Model::load(
                        &gguf,
                        &map,
                        cfg.clone(),
                        context_len,
                        opts.kv_type,
                    )?),
                    Some(device) => Box::new(CandleModel::load(
                        &gguf,
                        &map,
                        cfg.clone(),
                        context_len,
                        opts.kv_type,
                        device,
                    )?),
                }
            }
        };
        let stop_tokens = stop_tokens(&tokenizer);
        let info = ModelInfo {
            path: path.to_owned(),
            file_bytes: map.len() as u64,
            vocab_size: model.vocab_size(),
            tensor_count: gguf.tensors.len(),
            weight_types: model
                .weight_types()
                .into_iter()
                .map(|(t, n)| (format!("{t:?}"), n))
                .collect(),
            has_chat_template,
            supports_thinking,
            supports_tools: template.supports_tools(),
            nope_layers: cfg.nope_layers(),
            context_len,
            kv_type: opts.kv_type,
            placement: placement.to_string(),
            config: cfg,
            memory,
            load_ms: start.elapsed().as_secs_f64() * 1e3,
        };
        tracing::info!(path = %path.display(), load_ms = info.load_ms, "model loaded");
        Ok(Self {
            session: Session::new(model),
            live: None,
            kept: KeptCaches::default(),
            tokenizer,
            template,
            stop_tokens,
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn config(&self) -> &ModelConfig {
        &self.info.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn load_time(&self) -> Duration {
        Duration::from_secs_f64(self.info.load_ms / 1e3)
    }

    /// Context length in tokens (the KV cache size).
    pub fn context_len(&self) -> usize {
        self.session.max_len()
    }

    /// Positions currently held in the KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.session.len()
    }

    /// Bytes of the KV cache buffers.
    pub fn cache_bytes(&self) -> usize {
        self.session.backend().cache_bytes()
    }

    /// Bytes of the buffers a forward pass works in: bounded by a prefill chunk
    /// ([`crate::backend::PREFILL_CHUNK`] positions), whatever the prompt's length.
    pub fn scratch_bytes(&self) -> usize {
        self.session.backend().scratch_bytes()
    }

    /// Forgets the KV cache (the next prompt is prefilled from scratch).
    pub fn reset(&mut self) {
        self.session.truncate(0);
    }

    /// Sets the host memory other conversations' KV caches may keep (0: none is kept; the
    /// least recently used go first when it shrinks).
    pub fn set_kept_cache_budget(&mut self, bytes: usize) {
        self.kept.set_budget(bytes);
    }

    /// Host memory the kept caches hold now.
    pub fn kept_cache_bytes(&self) -> usize {
        self.kept.bytes()
    }

    /// Makes the KV cache `conversation`'s before its turn: the live cache, another
    /// conversation's, is copied out and kept (within the budget), and `conversation`'s kept
    /// cache, if any, is written back, so the next [`Engine::generate`] for it prefills only
    /// what follows. A conversation with no kept cache goes on from the live one (prefix reuse
    /// still takes a common beginning, e.g. the system prompt). Returns the cached positions.
    /// A backend that keeps no copies keeps nothing and goes on from the live cache.
    pub fn use_cache_of(&mut self, conversation: &str) -> Result<usize> {
        if self.live.as_deref() == Some(conversation) {
            return Ok(self.session.len());
        }
        if let Some(previous) = self.live.take() {
            if self.kept.budget() > 0 {
                if let Some(snapshot) = self.session.snapshot()? {
                    self.kept.keep(previous, snapshot);
                }
            }
        }
        self.live = Some(conversation.to_owned());
        if let Some(snapshot) = self.kept.take(conversation) {
            self.session.restore(snapshot)?;
        }
        Ok(self.session.len())
    }

    /// Tokens that end a generation: end-of-sequence and end-of-turn tokens.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// The model family's recommended sampling settings.
    pub fn default_sampling(&self) -> SamplingParams {
        SamplingParams::for_family(self.config().arch.family())
    }

    /// The model's chat template, or ChatML when its file has none ([`ModelInfo::has_chat_template`]).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Renders a conversation with the model's template (ChatML when its file has none).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        opts: &ChatOptions,
        today: chrono::NaiveDate,
    ) -> Result<String> {
        self.template.render(messages, opts, today)
    }

    /// Tokens of a rendered prompt: special tokens parsed, BOS added when the model asks for it.
    /// Text of which the vocabulary can encode nothing is an error naming that cause.
    pub fn encode_prompt(&self, rendered: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(rendered, true);
        if ids.is_empty() && !rendered.is_empty() {
            return Err(EngineError::Tokenizer(format!(
                "the prompt ({} bytes of text) encodes to no tokens: the vocabulary has a token for none of its characters",
                rendered.len()
            )));
        }
        let s = self.tokenizer.special();
        if let (true, Some(bos)) = (s.add_bos, s.bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Teacher-forced logits for every position of `tokens`, from an empty cache.
    pub fn logits(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.reset();
        if tokens.len() > self.context_len() {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: tokens.len(),
                context_len: self.context_len(),
                max_prompt: self.context_len(),
            });
        }
        let vocab = self.session.vocab_size();
        let out = self.session.forward(tokens, Logits::All)?;
        Ok(out.chunks_exact(vocab).map(|r| r.to_vec()).collect())
    }

    /// Runs `tokens` after the cached ones and returns the last position's logits (benchmarks,
    /// manual decoding).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self.session.forward(tokens, Logits::Last)?.to_vec())
    }

    /// Generates from `prompt` tokens, reusing the cached prefix.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerationParams,
        cancelled: &dyn Fn() -> bool,
        on_event: &mut dyn FnMut(GenerationEvent),
    ) -> Result<GenerationOutput> {
        generate::generate(
            &mut self.session,
            &self.tokenizer,
            &self.stop_tokens,
            prompt,
            params,
            cancelled,
            on_event,
        )
    }
}

/// End-of-sequence and end-of-turn ids: the GGUF's eos/eot plus the chat formats' turn ends.
fn stop_tokens(tok: &Tokenizer) -> Vec<u32> {
    let s = tok.special();
    let mut ids: Vec<u32> = [s.eos, s.eot].into_iter().flatten().collect();
    for piece in [
        "<|im_end|>",
        "<|endoftext|>",
        "<|eot_id|>",
        "<|end_of_text|>",
    ] {
        if let Some(id) = tok.token_id(piece) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}
