//! The built-in chat templates as data, transcribed from ms-swift 3.8's `TemplateMeta`
//! registrations (`swift/llm/template/template/{llm,utils,qwen,llama}.py`), and the
//! model_type -> template mapping of its model registry (`swift/llm/model/model/*.py`).

use chrono::NaiveDate;

/// Templates this build implements, in the order `--help` lists them.
pub const TEMPLATE_NAMES: &[&str] = &[
    "default", "chatml", "qwen", "qwen2_5", "qwen3", "llama3", "llama3_2",
];

/// Qwen2's (and ms-swift's `default` template's) system prompt.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";
/// Qwen2.5's system prompt.
pub const QWEN2_5_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// The template ms-swift registers for a model_type, or `None` when this build has none.
///
/// `smollm2` is ours (ms-swift 3.x does not register SmolLM2): its tokenizer speaks ChatML.
/// ms-swift maps `llama3_1` to the `llama3_2` template (both carry the "Cutting Knowledge
/// Date" system header), and we follow it.
pub fn default_template_for(model_type: &str) -> Option<&'static str> {
    Some(match model_type {
        "qwen2" => "qwen",
        "qwen2_5" => "qwen2_5",
        "qwen3" => "qwen3",
        "llama3" => "llama3",
        "llama3_1" | "llama3_2" => "llama3_2",
        "smollm2" => "chatml",
        _ => return None,
    })
}

/// One piece of a template prompt: text with `{{SYSTEM}}`/`{{QUERY}}`/`{{ROUND0}}`
/// placeholders (tokenized later), or literal token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Chunk {
    Text(String),
    Ids(Vec<u32>),
}

impl Chunk {
    pub(crate) fn text(s: impl Into<String>) -> Self {
        Chunk::Text(s.into())
    }

    /// ms-swift drops zero-length contexts (`len(context) == 0`) of either kind.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Chunk::Text(s) => s.is_empty(),
            Chunk::Ids(ids) => ids.is_empty(),
        }
    }
}

/// A sequence of chunks (ms-swift's `Prompt`).
pub(crate) type Prompt = Vec<Chunk>;

/// How tool responses after an assistant turn are written (ms-swift's agent templates;
/// only `_format_tool_responses` matters for encoding conversations without `tools`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentStyle {
    /// `react_en`: tool contents appended after `Observation:`.
    ReactEn,
    /// `hermes`: `<tool_response>` blocks in a user turn.
    Hermes,
    /// `llama3`: `<|start_header_id|>tool<|end_header_id|>` turns.
    Llama3,
}

/// ms-swift's `ThinkingTemplate` behaviour (Qwen3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Thinking {
    /// Prepended to assistant turns that do not start with `<think>` (hybrid thinking models).
    pub no_think_prefix: &'static str,
    /// What replaces the thinking of history turns when it is removed.
    pub history_think_prefix: &'static str,
}

/// One template, after ms-swift's `TemplateMeta.__post_init__` and `init(tokenizer)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TemplateMeta {
    pub name: &'static str,
    /// Start of a conversation without a system prompt.
    pub prefix: Prompt,
    /// One user turn plus the assistant header.
    pub prompt: Prompt,
    /// Between rounds; `None`: the template keeps only the last round.
    pub chat_sep: Option<Prompt>,
    /// After the final (trained) response.
    pub suffix: Prompt,
    /// Start of a conversation with a system prompt; `None`: no system support.
    pub system_prefix: Option<Prompt>,
    pub default_system: Option<String>,
    pub response_prefix: String,
    /// Put the tokenizer's own bos (and trailing special tokens) around the conversation.
    pub auto_add_bos: bool,
    pub stop_words: Vec<Chunk>,
    pub agent: AgentStyle,
    pub thinking: Option<Thinking>,
}

fn texts(parts: &[&str]) -> Prompt {
    parts.iter().map(|p| Chunk::text(*p)).collect()
}

const CHATML_PROMPT: &str = "<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n";
const LLAMA3_PROMPT: &str = "<|start_header_id|>user<|end_header_id|>\n\n{{QUERY}}<|eot_id|>\
                             <|start_header_id|>assistant<|end_header_id|>\n\n";

impl TemplateMeta {
    /// A bare meta with ms-swift's dataclass defaults (suffix = eos, no system).
    fn base(name: &'static str, prefix: Prompt, prompt: Prompt, eos_id: u32) -> Self {
        TemplateMeta {
            name,
            prefix,
            prompt,
            chat_sep: None,
            suffix: vec![Chunk::Ids(vec![eos_id])],
            system_prefix: None,
            default_system: None,
            response_prefix: String::new(),
            auto_add_bos: false,
            stop_words: Vec::new(),
            agent: AgentStyle::ReactEn,
            thinking: None,
        }
    }

    fn chatml(name: &'static str, eos_id: u32) -> Self {
        TemplateMeta {
            chat_sep: Some(texts(&["<|im_end|>\n"])),
            suffix: texts(&["<|im_end|>"]),
            system_prefix: Some(texts(&["<|im_start|>system\n{{SYSTEM}}<|im_end|>\n"])),
            auto_add_bos: true,
            ..Self::base(name, Vec::new(), texts(&[CHATML_PROMPT]), eos_id)
        }
    }

    /// ms-swift's `QwenTemplateMeta`: ChatML without bos, `<|endoftext|>` as a stop word.
    fn qwen(name: &'static str, default_system: Option<&str>, eos_id: u32) -> Self {
        TemplateMeta {
            default_system: default_system.map(str::to_string),
            auto_add_bos: false,
            stop_words: texts(&["<|endoftext|>"]),
            agent: AgentStyle::Hermes,
            ..Self::chatml(name, eos_id)
        }
    }

    fn llama3(
        name: &'static str,
        prefix: Prompt,
        system_prefix: Option<Prompt>,
        eos_id: u32,
    ) -> Self {
        TemplateMeta {
            chat_sep: Some(texts(&["<|eot_id|>"])),
            suffix: texts(&["<|eot_id|>"]),
            system_prefix,
            agent: AgentStyle::Llama3,
            ..Self::base(name, prefix, texts(&[LLAMA3_PROMPT]), eos_id)
        }
    }

    /// A built-in template by name, before `init`. `today` fills llama3_2's date header
    /// (ms-swift takes the date when the template is registered).
    pub(crate) fn builtin(name: &str, eos_id: u32, today: NaiveDate) -> Option<Self> {
        let meta = match name {
            "default" => TemplateMeta {
                chat_sep: Some(texts(&["\n\n"])),
                default_system: Some(DEFAULT_SYSTEM.to_string()),
                system_prefix: Some(texts(&["{{SYSTEM}}\n\n"])),
                auto_add_bos: true,
                ..Self::base(
                    "default",
                    Vec::new(),
                    texts(&["### Human:\n{{QUERY}}\n\n### Assistant:\n"]),
                    eos_id,
                )
            },
            "chatml" => Self::chatml("chatml", eos_id),
            "qwen" => Self::qwen("qwen", Some(DEFAULT_SYSTEM), eos_id),
            "qwen2_5" => Self::qwen("qwen2_5", Some(QWEN2_5_SYSTEM), eos_id),
            "qwen3" => TemplateMeta {
                thinking: Some(Thinking {
                    no_think_prefix: "<think>\n\n</think>\n\n",
                    history_think_prefix: "",
                }),
                ..Self::qwen("qwen3", None, eos_id)
            },
            "llama3" => Self::llama3(
                "llama3",
                texts(&["<|begin_of_text|>"]),
                Some(texts(&[
                    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{{SYSTEM}}<|eot_id|>",
                ])),
                eos_id,
            ),
            "llama3_2" => {
                let date = today.format("%d %b %Y");
                let prefix = format!(
                    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
                     Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n{{{{SYSTEM}}}}<|eot_id|>"
                );
                Self::llama3("llama3_2", vec![Chunk::Text(prefix)], None, eos_id)
            }
            _ => return None,
        };
        Some(meta.post_init())
    }

    /// ms-swift's `__post_init__`: a prefix holding `{{SYSTEM}}` becomes the system prefix,
    /// and the plain prefix is that text with the placeholder removed (non-text parts dropped).
    fn post_init(mut self) -> Self {
        if has_system(&self.prefix) {
            let plain = self
                .prefix
                .iter()
                .filter_map(|c| match c {
                    Chunk::Text(s) => Some(Chunk::Text(s.replace("{{SYSTEM}}", ""))),
                    Chunk::Ids(_) => None,
                })
                .collect();
            self.system_prefix = Some(std::mem::replace(&mut self.prefix, plain));
        }
        self
    }

    /// ms-swift's `to_generate_template_meta` (`--use_chat_template false`, `swift pt`):
    /// plain text, bos from the tokenizer, eos as suffix, no system and no multi-round.
    pub(crate) fn to_generation(&self, eos_id: u32) -> Self {
        TemplateMeta {
            auto_add_bos: true,
            stop_words: self.stop_words.clone(),
            thinking: self.thinking.clone(),
            ..Self::base(self.name, Vec::new(), texts(&["{{QUERY}}"]), eos_id)
        }
    }

    /// ms-swift's `init(tokenizer)` for stop words: the suffix's last piece and eos stop generation.
    pub(crate) fn add_stop_words(&mut self, eos_token: &str) {
        if let Some(last) = self.suffix.last()
            && !self.stop_words.contains(last)
        {
            self.stop_words.push(last.clone());
        }
        let eos = Chunk::text(eos_token);
        if !self.stop_words.contains(&eos) {
            self.stop_words.push(eos);
        }
    }

    pub(crate) fn supports_system(&self) -> bool {
        self.system_prefix.is_some()
    }

    pub(crate) fn supports_multi_round(&self) -> bool {
        self.chat_sep.is_some()
    }
}

fn has_system(prompt: &Prompt) -> bool {
    prompt
        .iter()
        .any(|c| matches!(c, Chunk::Text(s) if s.contains("{{SYSTEM}}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 3, 7).unwrap()
    }

    #[test]
    fn every_listed_template_is_built() {
        for name in TEMPLATE_NAMES {
            let meta = TemplateMeta::builtin(name, 0, day()).unwrap();
            assert_eq!(meta.name, *name);
        }
        assert!(TemplateMeta::builtin("llama", 0, day()).is_none());
    }

    #[test]
    fn llama3_2_moves_its_system_header_into_the_system_prefix() {
        let meta = TemplateMeta::builtin("llama3_2", 0, day()).unwrap();
        let Some([Chunk::Text(sys)]) = meta.system_prefix.as_deref() else {
            panic!("{:?}", meta.system_prefix)
        };
        assert!(
            sys.contains("Today Date: 07 Mar 2025\n\n{{SYSTEM}}<|eot_id|>"),
            "{sys}"
        );
        assert_eq!(
            meta.prefix,
            vec![Chunk::text(sys.replace("{{SYSTEM}}", ""))],
            "without a system the header stays, empty"
        );
    }

    #[test]
    fn model_types_map_as_ms_swift_registers_them() {
        assert_eq!(default_template_for("qwen2"), Some("qwen"));
        assert_eq!(default_template_for("llama3_1"), Some("llama3_2"));
        assert_eq!(default_template_for("smollm2"), Some("chatml"));
        assert_eq!(default_template_for("gpt2"), None);
    }
}
