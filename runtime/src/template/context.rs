//! From messages to a list of template pieces with loss weights: ms-swift's
//! `_swift_prepare_inputs`, `_get_system`, `_get_std_messages`, `_swift_encode` and the
//! loss-scale plugin, as pure functions over a `TemplateMeta`. Tokenization comes after
//! (`tokenize.rs`), because how pieces are merged before tokenizing depends on the weights.

use super::agent;
use super::error::TemplateError;
use super::meta::{Chunk, Prompt, TemplateMeta};
use super::{LossScale, Message, Role};

/// What a piece is for the loss: the assistant's text, the end-of-turn after the final
/// response, or anything else (ms-swift's `ContextType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Response,
    Suffix,
    Other,
}

/// One piece of the encoded conversation with its loss weight (0 or 1 for our loss scales).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Piece {
    pub chunk: Chunk,
    pub kind: Kind,
    pub weight: f32,
}

/// Training encodes the final response and its end-of-turn; inference stops at the
/// generation prompt and drops a trailing assistant message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Train,
    Infer,
}

/// The settings of one template instance that shape the pieces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings<'a> {
    pub meta: &'a TemplateMeta,
    pub use_chat_template: bool,
    /// The tokenizer's own special tokens around `a`: before it (bos) and after it.
    pub bos: &'a [u32],
    pub sep: &'a [u32],
}

/// A message being prepared: a tool turn after formatting holds template chunks.
#[derive(Debug, Clone, PartialEq)]
struct Turn {
    role: Role,
    content: Content,
    loss: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
enum Content {
    Text(String),
    /// Tool responses formatted by the agent style; used as the round's prompt.
    Chunks(Prompt),
    /// The missing final response (inference).
    Absent,
}

impl Content {
    fn text(&self) -> Option<&str> {
        match self {
            Content::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// Builds the weighted pieces of a conversation.
pub(crate) fn build(
    settings: Settings<'_>,
    messages: &[Message],
    mode: Mode,
    loss_scale: LossScale,
) -> Result<Vec<Piece>, TemplateError> {
    let meta = settings.meta;
    let (system, mut turns) = split_system(messages, mode)?;
    merge_and_format_tools(&mut turns, meta)?;
    if meta.thinking.is_some() {
        apply_thinking(&mut turns, settings, mode, loss_scale);
    }
    let system = match system {
        Some(_) if !meta.supports_system() => {
            return Err(TemplateError::SystemUnsupported {
                template: meta.name.to_string(),
                hint: if settings.use_chat_template {
                    ""
                } else {
                    " with --use_chat_template false (swift pt's generation template); \
                     drop the system message"
                },
            });
        }
        Some(s) => Some(s),
        None => meta.default_system.clone(),
    };
    let mut turns = std_rounds(turns)?;
    if turns.len() > 2 && !meta.supports_multi_round() {
        tracing::warn!(
            template = meta.name,
            "the template does not support multi-round chat; only the last round is used"
        );
        turns.drain(..turns.len() - 2);
    }
    let pieces = assemble(settings, system.as_deref(), &turns, mode);
    Ok(weigh(pieces, &turns, loss_scale))
}

/// Drops a trailing assistant message for inference, then takes a leading system message
/// off (ms-swift's `remove_response` and `StdTemplateInputs.from_dict`).
fn split_system(
    messages: &[Message],
    mode: Mode,
) -> Result<(Option<String>, Vec<Turn>), TemplateError> {
    let mut messages = messages;
    if mode == Mode::Infer
        && let Some((last, rest)) = messages.split_last()
        && last.role == Role::Assistant
    {
        messages = rest;
    }
    let (system, offset) = match messages.first() {
        Some(m) if m.role == Role::System => (Some(m.content.clone()), 1),
        _ => (None, 0),
    };
    let mut turns = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate().skip(offset) {
        if m.role == Role::System {
            return Err(TemplateError::BadMessage {
                index: i,
                reason: "a system message is only allowed first".to_string(),
            });
        }
        turns.push(Turn {
            role: m.role,
            content: Content::Text(m.content.clone()),
            loss: m.loss,
        });
    }
    Ok((system, turns))
}

/// Merges consecutive user (or assistant) messages and folds the tool messages that follow
/// an assistant message into one tool turn (ms-swift's `_swift_prepare_inputs`).
fn merge_and_format_tools(turns: &mut Vec<Turn>, meta: &TemplateMeta) -> Result<(), TemplateError> {
    let mut i = 1;
    while i < turns.len() {
        let (pre_role, role) = (turns[i - 1].role, turns[i].role);
        if pre_role == Role::Assistant && role == Role::Tool {
            let start = i;
            while i + 1 < turns.len() && turns[i + 1].role == Role::Tool {
                i += 1;
            }
            let tools: Vec<String> = turns[start..=i]
                .iter()
                .filter_map(|t| t.content.text().map(str::to_string))
                .collect();
            let assistant = turns[start - 1].content.text().unwrap_or_default();
            let (assistant, chunks) = agent::format_tool_responses(meta, assistant, &tools);
            turns[start - 1].content = Content::Text(assistant);
            turns.splice(
                start..=i,
                [Turn {
                    role: Role::Tool,
                    content: Content::Chunks(chunks),
                    loss: None,
                }],
            );
            i = start + 1;
        } else if pre_role == role && matches!(role, Role::Assistant | Role::User) {
            let next = turns.remove(i);
            if let (Content::Text(pre), Content::Text(cur)) =
                (&mut turns[i - 1].content, next.content)
            {
                pre.push_str(&cur);
            }
        } else {
            i += 1;
        }
    }
    if let Some(first) = turns.first()
        && first.role == Role::Tool
        && matches!(first.content, Content::Text(_))
    {
        return Err(TemplateError::BadMessage {
            index: 0,
            reason: "a tool message must follow an assistant message".to_string(),
        });
    }
    Ok(())
}

/// ms-swift's `ThinkingTemplate`: mark non-thinking answers with an empty think block, and
/// drop the thinking of history turns at inference (and with `--loss_scale last_round`).
fn apply_thinking(turns: &mut [Turn], settings: Settings<'_>, mode: Mode, loss_scale: LossScale) {
    let Some(thinking) = &settings.meta.thinking else {
        return;
    };
    let prefix = thinking.no_think_prefix;
    if !prefix.is_empty() && settings.use_chat_template {
        for t in turns.iter_mut().filter(|t| t.role == Role::Assistant) {
            if let Content::Text(s) = &mut t.content
                && !s.starts_with("<think>")
                && !s.starts_with(prefix)
            {
                s.insert_str(0, prefix);
            }
        }
    }
    if mode == Mode::Infer || loss_scale == LossScale::LastRound {
        let last = turns.len().saturating_sub(1);
        for (i, t) in turns.iter_mut().enumerate() {
            if t.role == Role::Assistant
                && i != last
                && let Content::Text(s) = &mut t.content
            {
                let answer = s.rsplit("</think>").next().unwrap_or_default();
                *s = format!("{}{}", thinking.history_think_prefix, py_strip(answer));
            }
        }
    }
}

/// Python's `str.strip()`: Unicode whitespace plus the ASCII separators \x1c..\x1f.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
}

/// Pairs messages into (query, response) rounds: a conversation that starts with the
/// assistant gets an empty user turn (pretraining), an odd one gets an absent response
/// (ms-swift's `_get_std_messages`). Checks each round's roles.
fn std_rounds(mut turns: Vec<Turn>) -> Result<Vec<Turn>, TemplateError> {
    if turns.first().is_some_and(|t| t.role == Role::Assistant) {
        turns.insert(
            0,
            Turn {
                role: Role::User,
                content: Content::Text(String::new()),
                loss: None,
            },
        );
    }
    if turns.len() % 2 == 1 {
        turns.push(Turn {
            role: Role::Assistant,
            content: Content::Absent,
            loss: None,
        });
    }
    if turns.is_empty() {
        return Err(TemplateError::EmptyConversation);
    }
    for (i, pair) in turns.chunks(2).enumerate() {
        let bad = |index: usize, reason: String| TemplateError::BadMessage { index, reason };
        if !matches!(pair[0].role, Role::User | Role::Tool) {
            return Err(bad(
                2 * i,
                format!(
                    "round {i} must start with a user (or tool) message, found {}",
                    pair[0].role
                ),
            ));
        }
        if pair[1].role != Role::Assistant {
            return Err(bad(
                2 * i + 1,
                format!(
                    "round {i} must end with an assistant message, found {}",
                    pair[1].role
                ),
            ));
        }
    }
    Ok(turns)
}

/// A template slot: a chunk, or where the response goes.
enum Slot {
    Chunk(Chunk),
    Response,
}

/// Lays out prefix, rounds, separators and suffix (ms-swift's `_swift_encode`).
fn assemble(
    settings: Settings<'_>,
    system: Option<&str>,
    turns: &[Turn],
    mode: Mode,
) -> Vec<(Chunk, Kind)> {
    let meta = settings.meta;
    let mut out: Vec<(Chunk, Kind)> = Vec::new();
    if meta.auto_add_bos && !settings.bos.is_empty() {
        out.push((Chunk::Ids(settings.bos.to_vec()), Kind::Other));
    }
    let prefix = match (system, &meta.system_prefix) {
        (Some(s), Some(sp)) if !s.is_empty() => sp,
        _ => &meta.prefix,
    };
    let slots = prefix.iter().cloned().map(Slot::Chunk);
    concat(slots, &mut out, system, None, None, None);

    let n_round = turns.len() / 2;
    for (i, pair) in turns.chunks(2).enumerate() {
        let (query, response) = (&pair[0], &pair[1]);
        let (prompt, query_text): (&[Chunk], &str) = match &query.content {
            Content::Chunks(chunks) => (chunks, ""),
            Content::Text(s) => (&meta.prompt, s),
            Content::Absent => (&meta.prompt, ""),
        };
        let mut slots: Vec<Slot> = prompt.iter().cloned().map(Slot::Chunk).collect();
        let mut extra: (&[Chunk], Kind) = (&[], Kind::Other);
        let response_text = response.content.text();
        if i + 1 < n_round {
            slots.push(Slot::Response);
            if turns[2 * (i + 1)].role != Role::Tool {
                extra = (meta.chat_sep.as_deref().unwrap_or_default(), Kind::Other);
            }
        } else if let Some(text) = response_text {
            slots.push(Slot::Response);
            let ends_with_stop = meta
                .stop_words
                .iter()
                .any(|w| matches!(w, Chunk::Text(s) if text.ends_with(s.as_str())));
            if mode == Mode::Train && settings.sep.is_empty() && !ends_with_stop {
                extra = (&meta.suffix, Kind::Suffix);
            }
        } else if !meta.response_prefix.is_empty() {
            slots.push(Slot::Chunk(Chunk::text(meta.response_prefix.clone())));
        }
        concat(
            slots.into_iter(),
            &mut out,
            system,
            Some(query_text),
            response_text,
            Some(i),
        );
        out.extend(extra.0.iter().map(|c| (c.clone(), extra.1)));
    }
    if meta.auto_add_bos && !settings.sep.is_empty() {
        out.push((Chunk::Ids(settings.sep.to_vec()), Kind::Suffix));
    }
    out
}

/// Fills placeholders in order and drops empty pieces; the response is kept even when empty
/// (ms-swift's `_concat_context_list`).
fn concat(
    slots: impl Iterator<Item = Slot>,
    out: &mut Vec<(Chunk, Kind)>,
    system: Option<&str>,
    query: Option<&str>,
    response: Option<&str>,
    round: Option<usize>,
) {
    let round0 = round.map(|r| r.to_string());
    let round1 = round.map(|r| (r + 1).to_string());
    let replacements = [
        ("{{SYSTEM}}", system),
        ("{{QUERY}}", query),
        ("{{ROUND0}}", round0.as_deref()),
        ("{{ROUND1}}", round1.as_deref()),
    ];
    for slot in slots {
        let chunk = match slot {
            Slot::Response => {
                out.push((Chunk::text(response.unwrap_or_default()), Kind::Response));
                continue;
            }
            Slot::Chunk(Chunk::Text(mut s)) => {
                for (placeholder, value) in replacements {
                    if let Some(v) = value
                        && s.contains(placeholder)
                    {
                        s = s.replace(placeholder, v);
                    }
                }
                Chunk::Text(s)
            }
            Slot::Chunk(ids) => ids,
        };
        if !chunk.is_empty() {
            out.push((chunk, Kind::Other));
        }
    }
}

/// Gives each piece its loss weight (ms-swift's `LossScale.__call__`): a response's own
/// `loss` flag wins, then the `--loss_scale` rule.
fn weigh(pieces: Vec<(Chunk, Kind)>, turns: &[Turn], loss_scale: LossScale) -> Vec<Piece> {
    let n_round = turns.len() / 2;
    let mut round = 0;
    pieces
        .into_iter()
        .map(|(chunk, kind)| {
            let is_last_round = round + 1 == n_round;
            let mut flag = None;
            if kind == Kind::Response {
                flag = turns.get(2 * round + 1).and_then(|t| t.loss);
                round += 1;
            }
            let weight = match flag {
                Some(loss) => f32::from(u8::from(loss)),
                None => loss_scale.weight(kind, is_last_round),
            };
            Piece {
                chunk,
                kind,
                weight,
            }
        })
        .collect()
}

impl LossScale {
    /// The weight of a piece without its own loss flag.
    fn weight(self, kind: Kind, is_last_round: bool) -> f32 {
        let trained = match (self, kind) {
            (LossScale::All, _) => true,
            (LossScale::LastRound, Kind::Response) => is_last_round,
            (_, Kind::Response | Kind::Suffix) => true,
            (_, Kind::Other) => false,
        };
        f32::from(u8::from(trained))
    }
}
