//! Tool responses inside a conversation, written as ms-swift's agent templates write them
//! (`swift/plugin/agent_template/{base,hermes,llama}.py`, `_format_tool_responses`).

use super::meta::{AgentStyle, Chunk, Prompt, TemplateMeta};

const ACTION: &str = "Action:";
const ACTION_INPUT: &str = "Action Input:";
const OBSERVATION: &str = "Observation:";

/// The assistant message (possibly extended) and the chunks that stand for the tool turn.
pub(crate) fn format_tool_responses(
    meta: &TemplateMeta,
    assistant: &str,
    tools: &[String],
) -> (String, Prompt) {
    // Every style falls back to ReAct when the assistant wrote a ReAct action.
    let react_action = assistant.contains(ACTION) && assistant.contains(ACTION_INPUT);
    match meta.agent {
        _ if react_action => react(assistant, tools),
        AgentStyle::ReactEn => react(assistant, tools),
        AgentStyle::Hermes => (assistant.to_string(), hermes(meta, tools)),
        AgentStyle::Llama3 => (assistant.to_string(), llama3(tools)),
    }
}

fn react(assistant: &str, tools: &[String]) -> (String, Prompt) {
    let mut assistant = assistant.to_string();
    if !(assistant.contains(ACTION) && assistant.contains(ACTION_INPUT)) {
        return (assistant, tools.iter().cloned().map(Chunk::Text).collect());
    }
    if !assistant.ends_with(OBSERVATION) {
        if !assistant.ends_with('\n') {
            assistant.push('\n');
        }
        assistant.push_str(OBSERVATION);
    }
    let mut out = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        if i > 0 {
            out.push(Chunk::text(OBSERVATION));
        }
        out.push(Chunk::text(tool.clone()));
        if !tool.ends_with('\n') {
            out.push(Chunk::text("\n"));
        }
    }
    (assistant, out)
}

fn hermes(meta: &TemplateMeta, tools: &[String]) -> Prompt {
    let responses = tools
        .iter()
        .map(|t| format!("<tool_response>\n{t}\n</tool_response>"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = meta.chat_sep.clone().unwrap_or_default();
    out.extend(meta.prompt.iter().map(|c| match c {
        Chunk::Text(s) => Chunk::Text(s.replace("{{QUERY}}", &responses)),
        ids => ids.clone(),
    }));
    out
}

fn llama3(tools: &[String]) -> Prompt {
    let mut out = vec![Chunk::text("<|eot_id|>")];
    out.extend(tools.iter().map(|t| {
        Chunk::Text(format!(
            "<|start_header_id|>tool<|end_header_id|>\n\n{t}<|eot_id|>"
        ))
    }));
    out.push(Chunk::text(
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ));
    out
}
