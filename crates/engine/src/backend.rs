//! The model interface every backend implements, and the [`Session`] that drives one.
//!
//! A [`Backend`] is the transformer on some device with a KV cache of `max_len` positions: it
//! runs tokens at given positions and returns their logits. It knows nothing of which tokens its
//! cache holds; the [`Session`] above it does, once for every backend: prefix reuse, commit
//! (positions count as cached only after a pass succeeded), rollback (a failed pass leaves the
//! cached prefix as it was) and the context-overflow check. Tokenizer, template, sampler,
//! generation loop and events sit above the session and are shared by all backends.

use crate::error::{EngineError, Result};
use crate::gguf::TensorType;

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every new position (teacher-forced scoring).
    All,
}

/// A transformer with a KV cache, on one device.
pub trait Backend: Send {
    /// Runs `tokens` at positions `pos..pos + tokens.len()`, attending to the cached positions
    /// `0..pos` (what the cache holds from `pos` on is forgotten), and stores their keys and
    /// values. Returns the logits, row-major (n, vocab) with n = 1 for [`Logits::Last`] or
    /// `tokens.len()` for [`Logits::All`]; the buffer is reused by the next call. The caller
    /// guarantees `0 < tokens.len()` and `pos + tokens.len() <= max_len()`.
    fn forward(&mut self, pos: usize, tokens: &[u32], logits: Logits) -> Result<&[f32]>;

    fn vocab_size(&self) -> usize;

    /// The context length: how many positions the KV cache holds.
    fn max_len(&self) -> usize;

    /// Bytes of the KV cache buffers as allocated now.
    fn cache_bytes(&self) -> usize;

    /// Weight types of the matrices, with how many tensors of each (for `inspect`).
    fn weight_types(&self) -> Vec<(TensorType, usize)>;
}

/// A backend and the tokens its KV cache holds.
pub struct Session {
    backend: Box<dyn Backend>,
    /// The tokens of cached positions `0..tokens.len()`, in order.
    tokens: Vec<u32>,
}

impl Session {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self {
            backend,
            tokens: Vec::new(),
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

    /// Runs `tokens` after the cached positions and caches them (see [`Backend::forward`]). On an
    /// error nothing new is cached; logits with a NaN are an error
    /// ([`EngineError::NanLogits`]), whichever backend computed them.
    pub fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<&[f32]> {
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
        let out = self.backend.forward(pos, tokens, logits)?;
        // The position of the first row returned.
        let first = match logits {
            Logits::Last => pos + tokens.len() - 1,
            Logits::All => pos,
        };
        for (i, row) in out.chunks(vocab.max(1)).enumerate() {
            check_logits(row, first + i)?;
        }
        self.tokens.extend_from_slice(tokens);
        Ok(out)
    }
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
    }

    impl Backend for Fake {
        fn forward(&mut self, pos: usize, tokens: &[u32], logits: Logits) -> Result<&[f32]> {
            if tokens.contains(&13) {
                return Err(EngineError::Sampling("the fake backend failed".into()));
            }
            let rows = match logits {
                Logits::Last => pos + tokens.len() - 1..pos + tokens.len(),
                Logits::All => pos..pos + tokens.len(),
            };
            self.out = rows.map(|p| p as f32).collect();
            Ok(&self.out)
        }
        fn vocab_size(&self) -> usize {
            20
        }
        fn max_len(&self) -> usize {
            8
        }
        fn cache_bytes(&self) -> usize {
            0
        }
        fn weight_types(&self) -> Vec<(TensorType, usize)> {
            Vec::new()
        }
    }

    fn session() -> Session {
        Session::new(Box::new(Fake { out: Vec::new() }))
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
