//! Streaming text from a growing list of token ids.
//!
//! A token may carry half of a UTF-8 character (byte-level BPE) or change how the text
//! before it decodes (leading-space merges), so text is released only when decoding the
//! window of recent tokens yields a longer string that does not end in a replacement
//! character. The same scheme as transformers' TextStreamer and vLLM.

use tokenizers::Tokenizer;

/// Incremental decoder of one sequence's generated tokens.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    tokens: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// Tokens before this index have been released as text.
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token and returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> String {
        self.tokens.push(token);
        let prefix = decode(
            tokenizer,
            &self.tokens[self.prefix_offset..self.read_offset],
        );
        let full = decode(tokenizer, &self.tokens[self.prefix_offset..]);
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
            delta
        } else {
            String::new()
        }
    }

    /// Text not yet released (an incomplete character at the end of generation).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> String {
        let prefix = decode(
            tokenizer,
            &self.tokens[self.prefix_offset..self.read_offset],
        );
        let full = decode(tokenizer, &self.tokens[self.prefix_offset..]);
        self.prefix_offset = self.tokens.len();
        self.read_offset = self.tokens.len();
        full.get(prefix.len()..).unwrap_or_default().to_string()
    }
}

/// Decodes ids to text, keeping special tokens (the engine strips stop tokens itself).
pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    tokenizer.decode(ids, false).unwrap_or_default()
}
