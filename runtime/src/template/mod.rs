//! Chat templates: messages to token ids and loss labels, token for token as ms-swift 3.x
//! (pinned to 3.8.3, see `runtime/tests/fixtures/templates/`) encodes them.
//!
//! - `meta`: the built-in templates as data, and the model_type -> template mapping.
//! - `context`: messages to weighted pieces (system handling, rounds, tool turns, thinking,
//!   loss scale, per-message `loss`).
//! - `tokenize`: pieces to ids and labels (joining equal-weight text as ms-swift does).
//! - `jinja`: `--template_backend jinja`, the tokenizer's own chat_template (inference only).

mod agent;
mod context;
mod error;
mod jinja;
mod message;
mod meta;
mod tokenize;

use std::path::Path;

use chrono::NaiveDate;
use kubeswift_args::{Args, Command};
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use context::{Mode, Settings};
pub use error::TemplateError;
use jinja::ChatTemplate;
pub use message::{Message, Role, UnknownRole};
use meta::{Chunk, TemplateMeta};
pub use meta::{DEFAULT_SYSTEM, QWEN2_5_SYSTEM, TEMPLATE_NAMES, default_template_for};
pub use tokenize::IGNORE_INDEX;

/// Which tokens a training sample trains (`--loss_scale`). A message's own `loss` flag wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossScale {
    /// Every assistant response (history included) and the final end-of-turn.
    #[default]
    Default,
    /// Only the last assistant response and its end-of-turn.
    LastRound,
    /// Every token (`swift pt`).
    All,
}

impl LossScale {
    /// The `--loss_scale` value; agent schemes (react, agentflan, ...) are not built.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "default" => Some(LossScale::Default),
            "last_round" => Some(LossScale::LastRound),
            "all" => Some(LossScale::All),
            _ => None,
        }
    }

    /// `--loss_scale` of resolved arguments (the args table refuses unbuilt values).
    pub fn from_args(args: &Args) -> Self {
        args.lookup("loss_scale")
            .and_then(Json::as_str)
            .and_then(Self::parse)
            .unwrap_or_default()
    }
}

/// A training sample: token ids and their labels (`IGNORE_INDEX` = no loss), unshifted:
/// `labels[i]` is the target *at* position i, as Hugging Face models take `labels`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// How many tokens are trained.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// `--template_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Swift,
    Jinja,
}

/// How to build a template, independent of the argument table.
#[derive(Debug, Clone)]
pub struct TemplateOptions {
    /// A built-in template name (`TEMPLATE_NAMES`).
    pub template: String,
    /// Replaces the template's default system prompt (already read from a .txt file).
    pub system: Option<String>,
    /// False: ms-swift's generation template (plain text, `swift pt`).
    pub use_chat_template: bool,
    pub backend: Backend,
    /// The date llama3_2's system header shows (ms-swift: the current date).
    pub today: NaiveDate,
}

impl TemplateOptions {
    /// Options for a named template with its defaults.
    pub fn new(template: impl Into<String>) -> Self {
        TemplateOptions {
            template: template.into(),
            system: None,
            use_chat_template: true,
            backend: Backend::Swift,
            today: chrono::Local::now().date_naive(),
        }
    }
}

/// `--system`: a path ending in `.txt` is read; otherwise literal `\n` become newlines
/// (ms-swift's TemplateArguments).
pub fn resolve_system(value: &str) -> Result<String, TemplateError> {
    if value.ends_with(".txt") {
        let path = Path::new(value);
        std::fs::read_to_string(path).map_err(|source| TemplateError::SystemFile {
            path: path.to_path_buf(),
            source,
        })
    } else {
        Ok(value.replace("\\n", "\n"))
    }
}

/// A chat template bound to a tokenizer.
pub struct Template {
    meta: TemplateMeta,
    tokenizer: Tokenizer,
    use_chat_template: bool,
    jinja: Option<ChatTemplate>,
    eos_id: u32,
    /// The tokenizer's own special tokens before and after a text (auto_add_bos templates).
    bos: Vec<u32>,
    sep: Vec<u32>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.meta.name)
            .field("use_chat_template", &self.use_chat_template)
            .field("jinja", &self.jinja.is_some())
            .finish_non_exhaustive()
    }
}

/// Tokens a template writes as text and needs as single special tokens.
fn required_tokens(name: &str) -> &'static [&'static str] {
    match name {
        "chatml" | "qwen" | "qwen2_5" | "qwen3" => &["<|im_start|>", "<|im_end|>"],
        "llama3" | "llama3_2" => &[
            "<|begin_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        _ => &[],
    }
}

impl Template {
    /// `--template` (or the default for `model_type`), `--system`, `--use_chat_template` and
    /// `--template_backend` from `args`; `tokenizer_config` is the model's
    /// tokenizer_config.json (its `chat_template` and `eos_token`).
    pub fn from_args(
        args: &Args,
        model_type: &str,
        tokenizer: Tokenizer,
        tokenizer_config: &Json,
    ) -> Result<Template, TemplateError> {
        let text = |name: &str| args.lookup(name).and_then(Json::as_str);
        let template = match text("template") {
            Some(t) => t.to_string(),
            None => default_template_for(model_type)
                .ok_or_else(|| TemplateError::NoDefaultTemplate {
                    model_type: model_type.to_string(),
                    known: TEMPLATE_NAMES.join(", "),
                })?
                .to_string(),
        };
        let system = text("system").map(resolve_system).transpose()?;
        // `swift pt` always uses the generation template (ms-swift's SwiftPt).
        let use_chat_template = args.command() != Command::Pt
            && args
                .lookup("use_chat_template")
                .and_then(Json::as_bool)
                .unwrap_or(true);
        let backend = match text("template_backend") {
            Some("jinja") => Backend::Jinja,
            _ => Backend::Swift,
        };
        let options = TemplateOptions {
            system,
            use_chat_template,
            backend,
            ..TemplateOptions::new(template)
        };
        Template::new(&options, tokenizer, tokenizer_config)
    }

    /// Builds a template from explicit options.
    pub fn new(
        options: &TemplateOptions,
        tokenizer: Tokenizer,
        tokenizer_config: &Json,
    ) -> Result<Template, TemplateError> {
        let mut tokenizer = tokenizer;
        // HF's fast tokenizers ignore tokenizer.json's truncation/padding unless asked.
        tokenizer
            .with_truncation(None)
            .map_err(TemplateError::tokenizer)?;
        tokenizer.with_padding(None);

        let eos_token = tokenizer_config
            .get("eos_token")
            .and_then(jinja::token_text)
            .ok_or(TemplateError::MissingConfigField { field: "eos_token" })?
            .to_string();
        let eos_id =
            tokenizer
                .token_to_id(&eos_token)
                .ok_or_else(|| TemplateError::MissingToken {
                    template: options.template.clone(),
                    token: eos_token.clone(),
                    why: "tokenizer_config.json's eos_token",
                })?;
        let chat =
            TemplateMeta::builtin(&options.template, eos_id, options.today).ok_or_else(|| {
                TemplateError::UnknownTemplate {
                    name: options.template.clone(),
                    known: TEMPLATE_NAMES.join(", "),
                }
            })?;
        if options.use_chat_template {
            for token in required_tokens(&options.template) {
                if tokenizer.token_to_id(token).is_none() {
                    return Err(TemplateError::MissingToken {
                        template: options.template.clone(),
                        token: token.to_string(),
                        why: "written by the template",
                    });
                }
            }
        }
        let mut meta = if options.use_chat_template {
            chat
        } else {
            chat.to_generation(eos_id)
        };
        if let Some(system) = &options.system {
            if !meta.supports_system() {
                return Err(TemplateError::SystemUnsupported {
                    template: options.template.clone(),
                    hint: if options.use_chat_template {
                        " (--system)"
                    } else {
                        " with --use_chat_template false (swift pt's generation template); drop --system"
                    },
                });
            }
            meta.default_system = Some(system.clone());
        }
        meta.add_stop_words(&eos_token);
        let (bos, sep) = if meta.auto_add_bos {
            bos_and_sep(&tokenizer)?
        } else {
            (Vec::new(), Vec::new())
        };
        let jinja = match options.backend {
            Backend::Jinja => Some(ChatTemplate::from_config(tokenizer_config)?),
            Backend::Swift => None,
        };
        Ok(Template {
            meta,
            tokenizer,
            use_chat_template: options.use_chat_template,
            jinja,
            eos_id,
            bos,
            sep,
        })
    }

    /// The template's name (`qwen2_5`, `llama3`, ...).
    pub fn name(&self) -> &str {
        self.meta.name
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The system prompt used when a conversation has none (`--system` or the template's).
    pub fn default_system(&self) -> Option<&str> {
        self.meta.default_system.as_deref()
    }

    /// False for ms-swift's generation template (`--use_chat_template false`, `swift pt`).
    pub fn uses_chat_template(&self) -> bool {
        self.use_chat_template
    }

    fn settings(&self) -> Settings<'_> {
        Settings {
            meta: &self.meta,
            use_chat_template: self.use_chat_template,
            bos: &self.bos,
            sep: &self.sep,
        }
    }

    /// Encodes a training sample: ids plus labels (`IGNORE_INDEX` except trained tokens).
    pub fn encode(
        &self,
        messages: &[Message],
        loss_scale: LossScale,
    ) -> Result<Encoded, TemplateError> {
        if self.jinja.is_some() {
            return Err(TemplateError::JinjaTraining);
        }
        let pieces = context::build(self.settings(), messages, Mode::Train, loss_scale)?;
        let mut tokens = tokenize::encode(&self.tokenizer, &pieces)?;
        let suffix = self.suffix_ids()?;
        tokenize::add_dynamic_eos(&tokens.input_ids, &mut tokens.labels, &suffix);
        // The first token never has a prediction target (ms-swift sets it in `_encode`).
        if let Some(first) = tokens.labels.first_mut() {
            *first = IGNORE_INDEX;
        }
        Ok(Encoded {
            input_ids: tokens.input_ids,
            labels: tokens.labels,
        })
    }

    /// Encodes a prompt for generation: the conversation (a trailing assistant message is
    /// dropped) followed by the generation prompt.
    pub fn encode_prompt(&self, messages: &[Message]) -> Result<Vec<u32>, TemplateError> {
        if let Some(jinja) = &self.jinja {
            let messages = match messages.split_last() {
                Some((last, rest)) if last.role == Role::Assistant => rest,
                _ => messages,
            };
            let text = jinja.render(messages)?;
            return tokenize::tokenize(&self.tokenizer, &text);
        }
        let pieces = context::build(self.settings(), messages, Mode::Infer, LossScale::Default)?;
        Ok(tokenize::encode(&self.tokenizer, &pieces)?.input_ids)
    }

    /// The suffix's ids, each piece tokenized on its own (ms-swift's dynamic-eos pattern).
    fn suffix_ids(&self) -> Result<Vec<u32>, TemplateError> {
        let mut ids = Vec::new();
        for chunk in &self.meta.suffix {
            match chunk {
                Chunk::Text(s) => ids.extend(tokenize::tokenize(&self.tokenizer, s)?),
                Chunk::Ids(v) => ids.extend(v),
            }
        }
        Ok(ids)
    }

    /// Single tokens that end generation: the template's end-of-turn (`<|im_end|>`,
    /// `<|eot_id|>`), its other stop words that are one token, and the tokenizer's eos.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        for word in &self.meta.stop_words {
            let id = match word {
                Chunk::Text(s) => self.tokenizer.token_to_id(s),
                Chunk::Ids(v) if v.len() == 1 => Some(v[0]),
                Chunk::Ids(_) => None,
            };
            if let Some(id) = id
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        if !ids.contains(&self.eos_id) {
            ids.push(self.eos_id);
        }
        ids
    }

    /// The stop words as text (ms-swift's `stop_words`); generation checks multi-token ones
    /// against the decoded text.
    pub fn stop_words(&self) -> Vec<String> {
        self.meta
            .stop_words
            .iter()
            .filter_map(|w| match w {
                Chunk::Text(s) => Some(s.clone()),
                Chunk::Ids(v) => self.tokenizer.decode(v, false).ok(),
            })
            .collect()
    }

    /// The tokenizer's eos id (from tokenizer_config.json's `eos_token`).
    pub fn eos_token_id(&self) -> u32 {
        self.eos_id
    }

    /// Generated ids without a trailing eos and end-of-turn suffix (ms-swift's
    /// `_skip_stop_decode`); other stop words stay in the output.
    pub fn strip_stop_suffix<'a>(&self, generated: &'a [u32]) -> &'a [u32] {
        let mut ids = generated;
        if let Some((&last, rest)) = ids.split_last()
            && last == self.eos_id
        {
            ids = rest;
        }
        let suffix: Vec<u32> = match self.meta.suffix.last() {
            // ms-swift keeps only the last token of a text suffix.
            Some(Chunk::Text(s)) => tokenize::tokenize(&self.tokenizer, s)
                .unwrap_or_default()
                .into_iter()
                .last()
                .into_iter()
                .collect(),
            Some(Chunk::Ids(v)) => v.clone(),
            None => Vec::new(),
        };
        if !suffix.is_empty() && ids.ends_with(&suffix) {
            ids = &ids[..ids.len() - suffix.len()];
        }
        ids
    }

    /// The response text of generated ids (stop suffix removed, special tokens kept).
    pub fn decode_response(&self, generated: &[u32]) -> Result<String, TemplateError> {
        self.tokenizer
            .decode(self.strip_stop_suffix(generated), false)
            .map_err(TemplateError::tokenizer)
    }
}

/// What the tokenizer puts around a text on its own (`encode("a")` with special tokens):
/// ms-swift's `auto_add_bos` adds the same around a conversation.
fn bos_and_sep(tokenizer: &Tokenizer) -> Result<(Vec<u32>, Vec<u32>), TemplateError> {
    let with = tokenizer
        .encode_fast("a", true)
        .map_err(TemplateError::tokenizer)?;
    let single = tokenize::tokenize(tokenizer, "a")?;
    let (with, [a]) = (with.get_ids(), single.as_slice()) else {
        return Err(TemplateError::Tokenizer(format!(
            "the text 'a' must be one token to find the tokenizer's bos (got {single:?})"
        )));
    };
    let idx = with.iter().position(|id| id == a).ok_or_else(|| {
        TemplateError::Tokenizer("encoding 'a' with special tokens lost the 'a' token".into())
    })?;
    Ok((with[..idx].to_vec(), with[idx + 1..].to_vec()))
}
