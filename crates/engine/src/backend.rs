//! The model interface every backend implements, and the [`Session`] that drives one.
//!
//! A [`Backend`] is the transformer on some device with a KV cache of `max_len` positions: it
//! runs tokens at given positions and returns their logits. It knows nothing of which tokens its
//! cache holds; the [`Session`] above it does, once for every backend: prefix reuse, commit
//! (positions count as cached only after a pass succeeded), rollback (a failed pass leaves the
//! cached prefix as it was) and the context-overflow check. Tokenizer, template, sampler,
//! generation loop and events sit above the session and are shared by all backends.
//!
//! The session runs a long input in passes of at most [`PREFILL_CHUNK`] positions, as llama.cpp
//! runs micro-batches: a backend's activation buffers are sized by the longest pass, so they
//! stay bounded for any prompt length, and a cancel is seen between passes. Every position's
//! logits are the same however the input is split (each row is computed on its own).

use crate::error::{EngineError, Result};
use crate::gguf::TensorType;
use crate::memory::PREFILL_CHUNK;

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every new position (teacher-forced scoring).
    All,
    /// Every new position, each computed exactly as a single-token pass at its position computes
    /// it (llama.cpp's kernels round a batch differently from a single row): the rows that
    /// verify drafted tokens in speculative decoding, whose result must be decoding's.
    Verify,
    /// None: a pass that only fills the cache (a chunk of a longer prompt before its last).
    None,
}

impl Logits {
    /// Whether every new position's row is returned.
    pub fn every_row(self) -> bool {
        matches!(self, Logits::All | Logits::Verify)
    }
}

/// A transformer with a KV cache, on one device.
pub trait Backend: Send {
    /// Runs `tokens` at positions `pos..pos + tokens.len()`, attending to the cached positions
    /// `0..pos` (what the cache holds from `pos` on is forgotten), and stores their keys and
    /// values. Returns the logits, row-major (n, vocab) with n = 1 for [`Logits::Last`],
    /// `tokens.len()` for [`Logits::All`] and [`Logits::Verify`] and 0 for [`Logits::None`] (a
    /// backend whose rows do not depend on the batch treats `Verify` as `All`); the buffer is
    /// reused by the next call. The caller guarantees `0 < tokens.len() <= PREFILL_CHUNK` and
    /// `pos + tokens.len() <= max_len()`.
    fn forward(&mut self, pos: usize, tokens: &[u32], logits: Logits) -> Result<&[f32]>;

    fn vocab_size(&self) -> usize;

    /// The context length: how many positions the KV cache holds.
    fn max_len(&self) -> usize;

    /// Bytes of the KV cache buffers as allocated now.
    fn cache_bytes(&self) -> usize;

    /// Bytes of the buffers a forward pass works in (activations, logits), as allocated now:
    /// bounded by the longest pass, not by the prompt.
    fn scratch_bytes(&self) -> usize;

    /// Weight types of the matrices, with how many tensors of each (for `inspect`).
    fn weight_types(&self) -> Vec<(TensorType, usize)>;

    /// Copies the keys and values of cached positions `0..len` to host memory, each layer's
    /// (keys, values) in the backend's own layout, for [`Backend::restore_cache`] to write back.
    /// `None`: this backend keeps no copies. (`&mut`: the runner asks its process for them.)
    fn save_cache(&mut self, len: usize) -> Result<Option<Vec<(HostRows, HostRows)>>> {
        let _ = len;
        Ok(None)
    }

    /// Writes back what [`Backend::save_cache`] copied of the positions of `tokens`; what the
    /// cache held after them is forgotten.
    fn restore_cache(&mut self, tokens: &[u32], layers: &[(HostRows, HostRows)]) -> Result<()> {
        let _ = (tokens, layers);
        Err(EngineError::Device(
            "this backend cannot restore a saved KV cache".into(),
        ))
    }
}

/// One cached tensor's elements, copied to host memory in the cache's element type.
#[derive(Clone, Debug, PartialEq)]
pub enum HostRows {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl HostRows {
    pub fn bytes(&self) -> usize {
        match self {
            HostRows::F32(v) => v.len() * 4,
            HostRows::F16(v) => v.len() * 2,
        }
    }
}

/// A session's cache copied out of its backend: the tokens it held and, per layer, their keys
/// and values ([`Session::snapshot`], [`Session::restore`]).
pub struct KvSnapshot {
    tokens: Vec<u32>,
    layers: Vec<(HostRows, HostRows)>,
}

impl KvSnapshot {
    pub fn new(tokens: Vec<u32>, layers: Vec<(HostRows, HostRows)>) -> Self {
        Self { tokens, layers }
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Host memory it holds.
    pub fn bytes(&self) -> usize {
        let rows: usize = self.layers.iter().map(|(k, v)| k.bytes() + v.bytes()).sum();
        rows + self.tokens.len() * 4
    }
}

/// A backend and the tokens its KV cache holds.
pub struct Session {
    backend: Box<dyn Backend>,
    /// The tokens of cached positions `0..tokens.len()`, in order.
    tokens: Vec<u32>,
    /// Every row of a [`Logits::All`] call run in several passes.
    all_rows: Vec<f32>,
}

impl Session {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self {
            backend,
            tokens: Vec::new(),
            all_rows: Vec::new(),
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn vocab_size(&self) -> usize {
        self.backend.vocab_size()
    }

    pub fn max_len(&self) -> usize {
        self.backend.max_len()
    }

    /// The cached tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Forgets cached positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
    }

    /// The cache copied out (see [`KvSnapshot`]); `None` when it is empty or the backend keeps
    /// no copies.
    pub fn snapshot(&mut self) -> Result<Option<KvSnapshot>> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        Ok(self
            .backend
            .save_cache(self.tokens.len())?
            .map(|layers| KvSnapshot::new(self.tokens.clone(), layers)))
    }

    /// Makes `snapshot` (of this session's backend) the cache. On an error the cache is empty.
    pub fn restore(&mut self, snapshot: KvSnapshot) -> Result<()> {
        self.tokens.clear();
        self.backend
            .restore_cache(&snapshot.tokens, &snapshot.layers)?;
        self.tokens = snapshot.tokens;
        Ok(())
    }

    /// Runs `tokens` after the cached positions and caches them (see [`Backend::forward`]), in
    /// passes of at most [`PREFILL_CHUNK`] positions. On an error nothing of the failed pass is
    /// cached (earlier passes stay cached); logits with a NaN are an error
    /// ([`EngineError::NanLogits`]), whichever backend computed them.
    pub fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<&[f32]> {
        match self.forward_cancellable(tokens, logits, &|| false)? {
            Some(out) => Ok(out),
            None => unreachable!("a pass that is never cancelled finished"),
        }
    }

    /// [`Session::forward`], polling `cancelled` before every pass after the first: `None` when
    /// it said stop (the passes run so far stay cached, a prefix the next request can reuse).
    pub fn forward_cancellable(
        &mut self,
        tokens: &[u32],
        logits: Logits,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<&[f32]>> {
        let pos = self.tokens.len();
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let max_len = self.backend.max_len();
        if pos + tokens.len() > max_len {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: pos + tokens.len(),
                context_len: max_len,
                max_prompt: max_len,
            });
        }
        let vocab = self.backend.vocab_size();
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(EngineError::Tokenizer(format!(
                "token id {id} is outside the vocabulary of {vocab} tokens"
            )));
        }
        let split = (tokens.len() - 1) / PREFILL_CHUNK * PREFILL_CHUNK;
        let (before, last) = tokens.split_at(split);
        self.all_rows.clear();
        for (i, chunk) in before.chunks(PREFILL_CHUNK).enumerate() {
            if i > 0 && cancelled() {
                return Ok(None);
            }
            let wanted = match logits {
                Logits::Last => Logits::None,
                other => other,
            };
            let out = pass(&mut *self.backend, &mut self.tokens, chunk, wanted)?;
            if logits.every_row() {
                self.all_rows.extend_from_slice(out);
            }
        }
        if !before.is_empty() && cancelled() {
            return Ok(None);
        }
        let out = pass(&mut *self.backend, &mut self.tokens, last, logits)?;
        if logits.every_row() && !before.is_empty() {
            self.all_rows.extend_from_slice(out);
            return Ok(Some(&self.all_rows));
        }
        Ok(Some(out))
    }
}

/// One pass of at most [`PREFILL_CHUNK`] positions after the `cached` ones; on success they
/// join the cached tokens.
fn pass<'a>(
    backend: &'a mut dyn Backend,
    cached: &mut Vec<u32>,
    tokens: &[u32],
    logits: Logits,
) -> Result<&'a [f32]> {
    let pos = cached.len();
    let vocab = backend.vocab_size();
    let out = backend.forward(pos, tokens, logits)?;
    // The position of the first row returned.
    let first = match logits {
        Logits::Last => pos + tokens.len() - 1,
        Logits::All | Logits::Verify | Logits::None => pos,
    };
    for (i, row) in out.chunks(vocab.max(1)).enumerate() {
        check_logits(row, first + i)?;
    }
    cached.extend_from_slice(tokens);
    Ok(out)
}

/// Refuses a row of logits with a NaN in it (`position`: where it was computed): a model whose
/// arithmetic breaks down must say so, not sample garbage or stop silently.
fn check_logits(row: &[f32], position: usize) -> Result<()> {
    // Lane-wise, so the scan vectorises: it runs once per generated token.
    let mut lanes = [false; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane |= x.is_nan();
        }
    }
    if lanes.contains(&true) || chunks.remainder().iter().any(|x| x.is_nan()) {
        return Err(EngineError::NanLogits { position });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose logits are the position of each row, and which fails on token 13.
    struct Fake {
        out: Vec<f32>,
        max_len: usize,
        /// (pos, tokens, logits) of every pass.
        passes: std::sync::Arc<std::sync::Mutex<Vec<(usize, usize, Logits)>>>,
    }

    impl Backend for Fake {
        fn forward(&mut self, pos: usize, tokens: &[u32], logits: Logits) -> Result<&[f32]> {
            if tokens.contains(&13) {
                return Err(EngineError::Sampling("the fake backend failed".into()));
            }
            assert!(tokens.len() <= PREFILL_CHUNK, "a pass longer than a chunk");
            self.passes
                .lock()
                .unwrap()
                .push((pos, tokens.len(), logits));
            let rows = match logits {
                Logits::Last => pos + tokens.len() - 1..pos + tokens.len(),
                Logits::All | Logits::Verify => pos..pos + tokens.len(),
                Logits::None => 0..0,
            };
            self.out = rows.map(|p| p as f32).collect();
            Ok(&self.out)
        }
        fn vocab_size(&self) -> usize {
            20
        }
        fn max_len(&self) -> usize {
            self.max_len
        }
        fn cache_bytes(&self) -> usize {
            0
        }
        fn scratch_bytes(&self) -> usize {
            0
        }
        fn weight_types(&self) -> Vec<(TensorType, usize)> {
            Vec::new()
        }
    }

    type Passes = std::sync::Arc<std::sync::Mutex<Vec<(usize, usize, Logits)>>>;

    fn session_of(max_len: usize) -> (Session, Passes) {
        let passes = Passes::default();
        let fake = Fake {
            out: Vec::new(),
            max_len,
            passes: passes.clone(),
        };
        (Session::new(Box::new(fake)), passes)
    }

    fn session() -> Session {
        session_of(8).0
    }

    #[test]
    fn a_long_input_runs_in_chunks_with_the_logits_of_one_pass() {
        let n = 2 * PREFILL_CHUNK + 7;
        let (mut s, passes) = session_of(4 * PREFILL_CHUNK);
        s.forward(&[1; 3], Logits::Last).unwrap();
        assert_eq!(
            s.forward(&vec![2; n], Logits::Last).unwrap(),
            [(n + 2) as f32]
        );
        let c = PREFILL_CHUNK;
        assert_eq!(
            passes.lock().unwrap()[1..],
            [
                (3, c, Logits::None),
                (3 + c, c, Logits::None),
                (3 + 2 * c, 7, Logits::Last)
            ]
        );
        assert_eq!(s.len(), n + 3);
        s.truncate(0);
        let all = s.forward(&vec![2; n], Logits::All).unwrap();
        assert_eq!(all, (0..n).map(|p| p as f32).collect::<Vec<_>>());
        // A multiple of the chunk: no empty pass at the end.
        s.truncate(0);
        passes.lock().unwrap().clear();
        s.forward(&vec![2; 2 * c], Logits::Last).unwrap();
        assert_eq!(
            passes.lock().unwrap()[..],
            [(0, c, Logits::None), (c, c, Logits::Last)]
        );
    }

    #[test]
    fn a_cancel_between_chunks_stops_the_pass_and_keeps_what_ran() {
        let (mut s, passes) = session_of(4 * PREFILL_CHUNK);
        let calls = std::cell::Cell::new(0);
        let cancel_on_second = || {
            calls.set(calls.get() + 1);
            calls.get() >= 2
        };
        let out = s
            .forward_cancellable(&vec![2; 3 * PREFILL_CHUNK], Logits::Last, &cancel_on_second)
            .unwrap();
        assert!(out.is_none());
        assert_eq!(passes.lock().unwrap().len(), 2);
        assert_eq!(s.len(), 2 * PREFILL_CHUNK);
    }

    #[test]
    fn a_failed_pass_caches_nothing_and_the_next_runs_at_the_same_position() {
        let mut s = session();
        assert_eq!(s.forward(&[1, 2, 3], Logits::All).unwrap(), [0.0, 1.0, 2.0]);
        assert!(s.forward(&[4, 13], Logits::Last).is_err());
        assert_eq!(s.tokens(), [1, 2, 3]);
        assert_eq!(s.forward(&[4], Logits::Last).unwrap(), [3.0]);
        s.truncate(2);
        assert_eq!(s.forward(&[5, 6], Logits::Last).unwrap(), [3.0]);
        assert_eq!(s.tokens(), [1, 2, 5, 6]);
    }

    #[test]
    fn the_session_refuses_what_no_backend_may_see() {
        let mut s = session();
        assert!(s.forward(&[], Logits::Last).is_err());
        let err = s.forward(&[1, 20], Logits::Last).unwrap_err();
        assert!(err.to_string().contains("token id 20 is outside"), "{err}");
        s.forward(&[1; 6], Logits::Last).unwrap();
        assert!(matches!(
            s.forward(&[1; 3], Logits::Last),
            Err(EngineError::ContextOverflow {
                prompt_tokens: 9,
                context_len: 8,
                ..
            })
        ));
        s.forward(&[1; 2], Logits::Last).unwrap();
        assert_eq!(s.len(), 8);
    }
}
