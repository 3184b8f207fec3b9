//! The sampling fields both completion routes share, checked and turned into the engine's
//! per-request `GenerationParams`. Unset fields keep the server's defaults (the command
//! line, then the model's generation_config.json), as ms-swift's deploy does.

use serde_json::Value;

use super::body::{Body, json_kind};
use super::error::ApiError;
use crate::infer::GenerationParams;

/// What a request asks of generation, beyond its prompt.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SamplingRequest {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// `None`: the default; `Some(0)`: disabled (OpenAI-style -1 also disables).
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f64>,
    pub n: usize,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    /// Top alternatives per token, when logprobs are requested.
    pub logprobs: Option<usize>,
}

/// Server-side limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_n: usize,
    pub max_logprobs: usize,
}

const MAX_STOPS: usize = 16;
const MAX_STOP_LEN: usize = 256;

impl SamplingRequest {
    /// Reads the shared fields; `logprobs` is read by each route (its shape differs).
    pub fn parse(body: &Body, limits: Limits) -> Result<Self, ApiError> {
        // OpenAI's newer name wins over the deprecated one when both are given.
        let max_tokens = match body.opt::<i64>("max_completion_tokens")? {
            Some(m) => Some(("max_completion_tokens", m)),
            None => body.opt::<i64>("max_tokens")?.map(|m| ("max_tokens", m)),
        };
        let max_tokens = match max_tokens {
            Some((name, m)) if m < 1 => {
                return Err(ApiError::invalid(
                    name,
                    format!("'{name}' must be at least 1, got {m}"),
                ));
            }
            m => m.map(|(_, m)| m as usize),
        };
        let temperature = finite(body, "temperature")?;
        if let Some(t) = temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::invalid(
                "temperature",
                format!("'temperature' must be in [0, 2], got {t:?}"),
            ));
        }
        let top_p = finite(body, "top_p")?;
        if let Some(p) = top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::invalid(
                "top_p",
                format!("'top_p' must be in (0, 1], got {p:?}"),
            ));
        }
        let top_k = match body.opt::<i64>("top_k")? {
            Some(k) if k < -1 => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("'top_k' must be -1 (disabled) or at least 0, got {k}"),
                ));
            }
            Some(k) => Some(k.max(0) as usize),
            None => None,
        };
        let repetition_penalty = finite(body, "repetition_penalty")?;
        if let Some(r) = repetition_penalty
            && !(r > 0.0 && r <= 10.0)
        {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("'repetition_penalty' must be in (0, 10], got {r:?}"),
            ));
        }
        for name in ["presence_penalty", "frequency_penalty"] {
            if let Some(v) = finite(body, name)?
                && v != 0.0
            {
                return Err(ApiError::invalid(
                    name,
                    format!("'{name}' is not supported; use 'repetition_penalty'"),
                ));
            }
        }
        // A bias the engine does not apply would silently change what the client asked
        // for; an empty map (some clients send one by default) asks nothing.
        match body.raw("logit_bias") {
            None => {}
            Some(Value::Object(o)) if o.is_empty() => {}
            Some(Value::Object(_)) => {
                return Err(ApiError::invalid(
                    "logit_bias",
                    "'logit_bias' is not supported",
                ));
            }
            Some(v) => {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!("'logit_bias' must be an object, not {}", json_kind(v)),
                ));
            }
        }
        let n = match body.opt::<i64>("n")? {
            None => 1,
            Some(n) if n >= 1 && n as usize <= limits.max_n => n as usize,
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("'n' must be between 1 and {}, got {n}", limits.max_n),
                ));
            }
        };
        let seed = body.opt::<i64>("seed")?.map(|s| s as u64);
        let stream = body.opt::<bool>("stream")?.unwrap_or(false);
        let include_usage = match body.raw("stream_options") {
            None => false,
            Some(_) if !stream => {
                return Err(ApiError::invalid(
                    "stream_options",
                    "'stream_options' is only allowed when 'stream' is true",
                ));
            }
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(ApiError::invalid(
                        "stream_options.include_usage",
                        format!("'include_usage' must be a boolean, not {}", json_kind(v)),
                    ));
                }
            },
            Some(v) => {
                return Err(ApiError::invalid(
                    "stream_options",
                    format!("'stream_options' must be an object, not {}", json_kind(v)),
                ));
            }
        };
        Ok(SamplingRequest {
            max_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            n,
            stop: stop_strings(body)?,
            seed,
            stream,
            include_usage,
            logprobs: None,
        })
    }

    /// The engine parameters of choice `index`: the server's `defaults` with this
    /// request's fields applied; `seed` seeds choice 0 (the others follow it).
    pub fn params(&self, defaults: &GenerationParams, seed: u64, index: usize) -> GenerationParams {
        let mut p = defaults.clone();
        if let Some(t) = self.temperature {
            p.sampling.temperature = t;
        }
        if let Some(v) = self.top_p {
            p.sampling.top_p = v;
        }
        if let Some(k) = self.top_k {
            p.sampling.top_k = k;
        }
        if let Some(r) = self.repetition_penalty {
            p.sampling.repetition_penalty = r;
        }
        if self.max_tokens.is_some() {
            p.max_new_tokens = self.max_tokens;
        }
        for s in &self.stop {
            if !p.stop_words.contains(s) {
                p.stop_words.push(s.clone());
            }
        }
        p.logprobs = self.logprobs.is_some();
        p.top_logprobs = self.logprobs.unwrap_or(0);
        p.seed = seed.wrapping_add(index as u64);
        p.exact_seed = true;
        p
    }
}

/// A number that must be finite (JSON cannot say NaN, but 1e999 overflows to an error).
fn finite(body: &Body, name: &str) -> Result<Option<f64>, ApiError> {
    match body.opt::<f64>(name)? {
        Some(v) if !v.is_finite() => Err(ApiError::invalid(
            name,
            format!("'{name}' must be a finite number"),
        )),
        v => Ok(v),
    }
}

/// `stop`: a string or an array of strings.
fn stop_strings(body: &Body) -> Result<Vec<String>, ApiError> {
    let stops = match body.raw("stop") {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::invalid(
                    "stop",
                    format!("'stop' entries must be strings, not {}", json_kind(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "'stop' must be a string or an array of strings, not {}",
                    json_kind(other)
                ),
            ));
        }
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} stop strings, got {}", stops.len()),
        ));
    }
    if let Some(s) = stops
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_LEN)
    {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop strings must be 1 to {MAX_STOP_LEN} bytes long, got {}",
                s.len()
            ),
        ));
    }
    Ok(stops)
}

/// Checks a top-logprobs count against the server's `--max_logprobs`.
pub fn check_logprobs(param: &str, n: i64, limits: Limits) -> Result<usize, ApiError> {
    if n < 0 || n as usize > limits.max_logprobs {
        return Err(ApiError::invalid(
            param,
            format!(
                "'{param}' must be between 0 and {} (--max_logprobs), got {n}",
                limits.max_logprobs
            ),
        ));
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_n: 4,
        max_logprobs: 5,
    };

    fn parse(json: &str) -> Result<SamplingRequest, ApiError> {
        SamplingRequest::parse(&Body::parse(json.as_bytes()).unwrap(), LIMITS)
    }

    fn param(json: &str) -> String {
        parse(json).unwrap_err().param.unwrap_or_default()
    }

    #[test]
    fn fields_are_read_and_applied_over_defaults() {
        let r = parse(
            r#"{"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": -1, "n": 2,
                "stop": "END", "seed": 3, "stream": true, "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!((r.n, r.stream, r.include_usage), (2, true, true));
        assert_eq!(r.stop, vec!["END"]);
        let defaults = GenerationParams {
            stop_words: vec!["<|im_end|>".into()],
            ..GenerationParams::default()
        };
        let p = r.params(&defaults, 3, 1);
        assert_eq!(p.sampling.temperature, 0.5);
        assert_eq!(p.sampling.top_k, 0);
        assert_eq!(p.max_new_tokens, Some(5));
        assert_eq!(p.stop_words, vec!["<|im_end|>", "END"]);
        assert_eq!((p.seed, p.exact_seed), (4, true));
    }

    #[test]
    fn unset_fields_keep_the_server_defaults() {
        let defaults = GenerationParams {
            max_new_tokens: Some(9),
            ..GenerationParams::default()
        };
        let p = parse("{}").unwrap().params(&defaults, 7, 0);
        assert_eq!(p.sampling, defaults.sampling);
        assert_eq!(p.max_new_tokens, Some(9));
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(param(r#"{"max_tokens": 0}"#), "max_tokens");
        assert_eq!(param(r#"{"max_tokens": -3}"#), "max_tokens");
        assert_eq!(param(r#"{"max_tokens": 1.5}"#), "max_tokens");
        assert_eq!(
            param(r#"{"max_completion_tokens": "9"}"#),
            "max_completion_tokens"
        );
        assert_eq!(param(r#"{"temperature": 2.5}"#), "temperature");
        assert_eq!(param(r#"{"top_p": 0}"#), "top_p");
        assert_eq!(param(r#"{"top_k": -2}"#), "top_k");
        assert_eq!(param(r#"{"repetition_penalty": 0}"#), "repetition_penalty");
        assert_eq!(param(r#"{"n": 5}"#), "n");
        assert_eq!(param(r#"{"stop": [1]}"#), "stop");
        assert_eq!(param(r#"{"stop": [""]}"#), "stop");
        assert_eq!(param(r#"{"stream": "yes"}"#), "stream");
        assert_eq!(
            param(r#"{"stream_options": {"include_usage": true}}"#),
            "stream_options"
        );
        assert_eq!(param(r#"{"presence_penalty": 1}"#), "presence_penalty");
        assert_eq!(param(r#"{"logit_bias": {"5": 100}}"#), "logit_bias");
        assert_eq!(param(r#"{"logit_bias": [1]}"#), "logit_bias");
        assert!(parse(r#"{"logit_bias": {}}"#).is_ok());
        let huge = parse(r#"{"temperature": 1e308}"#).unwrap_err();
        assert!(huge.message.ends_with("got 1e308"), "{}", huge.message);
        assert_eq!(param(r#"{"seed": "x"}"#), "seed");
        assert_eq!(
            check_logprobs("top_logprobs", 6, LIMITS)
                .unwrap_err()
                .param
                .unwrap(),
            "top_logprobs"
        );
    }
}
