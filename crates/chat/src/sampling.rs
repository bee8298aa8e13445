//! How one answer is sampled and how long it may grow: [`Sampling`] holds the choices (`None` =
//! the model family's default), from the settings or from an API request; [`Sampling::validate`]
//! checks them once and gives [`AnswerParams`], the only form the engine worker accepts.

use crate::error::{ChatError, Result};

/// Longest answer anyone may ask for, in tokens.
pub const MAX_TOKENS_LIMIT: usize = 1 << 20;
/// Stop strings per answer, and the length of each (OpenAI's API allows four).
pub const MAX_STOP_STRINGS: usize = 4;
pub const MAX_STOP_BYTES: usize = 256;

/// Sampling choices for one answer, not yet checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// `None`: a new seed for every answer (so regenerate differs).
    pub seed: Option<u64>,
    /// Longest answer, in tokens.
    pub max_tokens: usize,
    /// Thinking budget: at this many thinking tokens the engine closes the thinking and the
    /// answer follows (`None`: no limit). Local models only: an endpoint runs its own.
    pub max_thinking_tokens: Option<usize>,
    /// Text that ends the answer (not included in it).
    pub stop: Vec<String>,
    /// Whether the engine may draft tokens and verify them several per pass (the answer is the
    /// same; see [`engine::Speculative`]). Local models only.
    pub speculative: bool,
}

/// Validated [`Sampling`]: only [`Sampling::validate`] makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerParams(Sampling);

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ChatError {
    ChatError::InvalidSetting {
        field,
        reason: reason.into(),
    }
}

/// `value`, when set, lies in `lo..=hi` (NaN does not).
pub(crate) fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &'static str,
    value: Option<T>,
    lo: T,
    hi: T,
) -> Result<()> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(invalid(
            field,
            format!("must be between {lo} and {hi}, got {v}"),
        )),
        _ => Ok(()),
    }
}

/// Whether the engine's sampler accepts a value for `field`, set by `set` on settings that are
/// valid otherwise; its refusal, naming the accepted range, becomes the setting's error.
fn engine_accepts(
    field: &'static str,
    set: impl FnOnce(&mut engine::SamplingParams),
) -> Result<()> {
    let mut params = engine::SamplingParams::for_family(engine::ModelFamily::Llama);
    set(&mut params);
    params.validate().map_err(|e| match e {
        // The sampler's text starts with the setting's own name, which the error names already.
        engine::EngineError::Sampling(why) => {
            let rule = why
                .strip_prefix(field)
                .map_or(why.as_str(), str::trim_start);
            invalid(field, rule.to_string())
        }
        other => invalid(field, other.to_string()),
    })
}

impl Sampling {
    /// Rejects values that cannot work, naming the field and the accepted range.
    pub fn validate(self) -> Result<AnswerParams> {
        check_range("max_tokens", Some(self.max_tokens), 1, MAX_TOKENS_LIMIT)?;
        check_range(
            "max_thinking_tokens",
            self.max_thinking_tokens,
            1,
            MAX_TOKENS_LIMIT,
        )?;
        for (field, v) in [
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("min_p", self.min_p),
            ("repeat_penalty", self.repeat_penalty),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(invalid(field, "must be a number"));
            }
        }
        // What each stage accepts is the sampler's rule (`engine::SamplingParams::validate`);
        // the app only adds upper limits for temperature and penalty. A second copy of the
        // ranges here once accepted a top-p of 0 that the sampler then refused for every answer.
        if let Some(v) = self.temperature {
            engine_accepts("temperature", |p| p.temperature = v)?;
        }
        if let Some(v) = self.top_p {
            engine_accepts("top_p", |p| p.top_p = v)?;
        }
        if let Some(v) = self.min_p {
            engine_accepts("min_p", |p| p.min_p = v)?;
        }
        if let Some(v) = self.repeat_penalty {
            engine_accepts("repeat_penalty", |p| p.repeat_penalty = v)?;
        }
        check_range("temperature", self.temperature, 0.0, 5.0)?;
        check_range("top_k", self.top_k, 0, 1_000_000)?;
        check_range("repeat_penalty", self.repeat_penalty, 0.1, 5.0)?;
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(invalid(
                "stop",
                format!(
                    "must hold at most {MAX_STOP_STRINGS} strings, got {}",
                    self.stop.len()
                ),
            ));
        }
        if let Some(s) = self
            .stop
            .iter()
            .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(invalid(
                "stop",
                format!(
                    "each string must have 1 to {MAX_STOP_BYTES} bytes, got {}",
                    s.len()
                ),
            ));
        }
        Ok(AnswerParams(self))
    }
}

impl AnswerParams {
    /// The checked choices, for a remote endpoint that takes them one by one.
    pub fn sampling(&self) -> &Sampling {
        &self.0
    }

    pub fn max_tokens(&self) -> usize {
        self.0.max_tokens
    }

    pub fn stop(&self) -> &[String] {
        &self.0.stop
    }

    pub fn max_thinking_tokens(&self) -> Option<usize> {
        self.0.max_thinking_tokens
    }

    /// The engine's drafting mode: adaptive when allowed (it drafts only while drafting pays).
    pub fn speculative(&self) -> engine::Speculative {
        match self.0.speculative {
            true => engine::Speculative::Adaptive,
            false => engine::Speculative::Off,
        }
    }

    /// The engine's sampler settings: `defaults` (the model family's) with these overrides, and
    /// the fixed seed or else `fresh_seed()`.
    pub fn engine_sampling(
        &self,
        defaults: engine::SamplingParams,
        fresh_seed: impl FnOnce() -> u64,
    ) -> engine::SamplingParams {
        let s = &self.0;
        engine::SamplingParams {
            temperature: s.temperature.unwrap_or(defaults.temperature),
            top_p: s.top_p.unwrap_or(defaults.top_p),
            top_k: s.top_k.unwrap_or(defaults.top_k),
            min_p: s.min_p.unwrap_or(defaults.min_p),
            repeat_penalty: s.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            seed: s.seed.unwrap_or_else(fresh_seed),
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Sampling {
        Sampling {
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            repeat_penalty: None,
            seed: None,
            max_tokens: 16,
            max_thinking_tokens: None,
            stop: Vec::new(),
            speculative: true,
        }
    }

    #[test]
    fn overrides_replace_the_family_defaults_and_a_fixed_seed_wins() {
        let defaults = engine::SamplingParams::for_family(engine::ModelFamily::Llama);
        let p = Sampling {
            temperature: Some(0.0),
            seed: Some(7),
            ..base()
        }
        .validate()
        .unwrap();
        let s = p.engine_sampling(defaults.clone(), || unreachable!("the seed is fixed"));
        assert_eq!((s.temperature, s.seed), (0.0, 7));
        assert_eq!((s.top_k, s.top_p), (defaults.top_k, defaults.top_p));
        let fresh = base().validate().unwrap().engine_sampling(defaults, || 99);
        assert_eq!(fresh.seed, 99);
    }

    #[test]
    fn top_p_zero_is_refused_here_as_the_sampler_would_refuse_it() {
        let defaults = engine::SamplingParams::for_family(engine::ModelFamily::SmolLM3);
        let edges = [-1.0, 0.0, 1e-6, 0.1, 0.5, 1.0, 1.0001, 5.0, 6.0, f32::NAN];
        for field in ["temperature", "top_p", "min_p", "repeat_penalty"] {
            for v in edges {
                let mut s = base();
                match field {
                    "temperature" => s.temperature = Some(v),
                    "top_p" => s.top_p = Some(v),
                    "min_p" => s.min_p = Some(v),
                    _ => s.repeat_penalty = Some(v),
                }
                if let Ok(p) = s.validate() {
                    let engine = p.engine_sampling(defaults.clone(), || 1);
                    assert!(
                        engine.validate().is_ok(),
                        "{field} = {v} passed the settings but the sampler refuses it"
                    );
                }
            }
        }
        let err = Sampling {
            top_p: Some(0.0),
            ..base()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("top_p") && err.contains("(0, 1]"), "{err}");
    }

    #[test]
    fn a_refused_value_names_its_field_once() {
        // The API put the field before the sampler's text, which starts with the field:
        // "`temperature` temperature must be ...".
        match (Sampling {
            temperature: Some(-1.0),
            ..base()
        })
        .validate()
        {
            Err(ChatError::InvalidSetting { field, reason }) => {
                assert_eq!(field, "temperature");
                assert!(reason.starts_with("must be finite"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let field = |s: Sampling| match s.validate() {
            Err(ChatError::InvalidSetting { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(Sampling {
                max_tokens: 0,
                ..base()
            }),
            "max_tokens"
        );
        assert_eq!(
            field(Sampling {
                max_thinking_tokens: Some(0),
                ..base()
            }),
            "max_thinking_tokens"
        );
        assert_eq!(
            field(Sampling {
                temperature: Some(f32::NAN),
                ..base()
            }),
            "temperature"
        );
        assert_eq!(
            field(Sampling {
                top_p: Some(1.5),
                ..base()
            }),
            "top_p"
        );
        assert_eq!(
            field(Sampling {
                stop: vec!["a".into(); 5],
                ..base()
            }),
            "stop"
        );
        assert_eq!(
            field(Sampling {
                stop: vec![String::new()],
                ..base()
            }),
            "stop"
        );
    }
}
