//! Dataset errors: each names the dataset, file and line (or row) it is about.

use std::fmt;
use std::path::PathBuf;

use crate::template::TemplateError;

/// Where a row came from: its file and 1-based line (JSON Lines, CSV) or element index
/// (a JSON array), or its byte offset when read from the middle of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOrigin {
    pub file: String,
    pub position: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Line(u64),
    /// Index in a JSON array (0-based, as Python would print it).
    Element(u64),
    /// A line read from a byte range whose line numbers are unknown.
    Byte(u64),
}

impl fmt::Display for RowOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Position::Line(n) => write!(f, "{}:{n}", self.file),
            Position::Element(i) => write!(f, "{} [element {i}]", self.file),
            Position::Byte(b) => write!(f, "{} [byte {b}]", self.file),
        }
    }
}

/// Why one row was refused; dropped and counted unless `--strict`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("a row must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("{0}")]
    Format(String),
    #[error("template: {0}")]
    Template(String),
    #[error("{length} tokens is over --max_length {max_length} (--truncation_strategy delete)")]
    TooLong { length: usize, max_length: usize },
    /// Every label is -100: the sample would train nothing (and a batch of such samples
    /// would log a loss of 0 and 0 tokens/s).
    #[error("{}", no_loss_reason(*.truncated_to))]
    NoLoss {
        /// `--max_length` when truncation cut the sample, which may have cut the reply off.
        truncated_to: Option<usize>,
    },
}

fn no_loss_reason(truncated_to: Option<usize>) -> String {
    match truncated_to {
        Some(max) => format!(
            "no token carries a loss after truncation to --max_length {max} (the reply was \
             cut off; raise --max_length or use --truncation_strategy delete)"
        ),
        None => "no token carries a loss (no assistant reply to train on)".into(),
    }
}

/// A dataset error that stops loading.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("--{arg} '{spec}': {reason}")]
    BadSpec {
        arg: &'static str,
        spec: String,
        reason: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{file}: unsupported file type (expected .jsonl, .json, .csv or .txt)")]
    UnknownFileType { file: String },

    #[error("{origin}: {error}")]
    BadRow { origin: RowOrigin, error: RowError },

    #[error("{dataset}: no usable rows{}", dropped_note(*.dropped))]
    Empty { dataset: String, dropped: usize },

    #[error("--columns: {0}")]
    Columns(String),

    #[error(
        "--{arg} '{spec}' asks for #{requested} rows of its validation split, but only {available} exist"
    )]
    ValSampleTooLarge {
        arg: &'static str,
        spec: String,
        requested: usize,
        available: usize,
    },

    #[error("--split_dataset_ratio {ratio}: {reason}")]
    Split { ratio: f64, reason: String },

    #[error("{0}")]
    Template(#[from] TemplateError),

    #[error("{0}")]
    Args(String),
}

fn dropped_note(dropped: usize) -> String {
    if dropped == 0 {
        String::new()
    } else {
        format!(" ({dropped} bad rows dropped; pass --strict true to stop at the first one)")
    }
}
