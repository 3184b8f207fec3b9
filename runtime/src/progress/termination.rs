//! The final report as the container's termination message.

use std::path::Path;

use super::ProgressReport;

/// The kubelet keeps at most this many bytes of a termination message.
pub const MAX_TERMINATION_MESSAGE_BYTES: usize = 4096;

/// The final report as one JSON line of at most [`MAX_TERMINATION_MESSAGE_BYTES`]: marked
/// `finished`; if a very long error or checkpoint URI would push it over, the error is cut
/// short first, then the URI dropped (a truncated JSON document would not parse, and the
/// step and loss matter more).
pub fn termination_message(report: &ProgressReport) -> String {
    let mut report = report.clone();
    report.finished = true;
    let text = to_json(&report);
    if text.len() <= MAX_TERMINATION_MESSAGE_BYTES {
        return text;
    }
    if let Some(error) = &mut report.error {
        let mut keep = 1024.min(error.len());
        while !error.is_char_boundary(keep) {
            keep -= 1;
        }
        error.truncate(keep);
        let text = to_json(&report);
        if text.len() <= MAX_TERMINATION_MESSAGE_BYTES {
            return text;
        }
    }
    report.checkpoint = None;
    to_json(&report)
}

fn to_json(report: &ProgressReport) -> String {
    // A struct of numbers, strings and options always serialises.
    serde_json::to_string(report).unwrap_or_default()
}

/// Writes the termination message to `path` (the kubelet's `/dev/termination-log`).
pub fn write_termination_message(path: &Path, report: &ProgressReport) -> std::io::Result<()> {
    std::fs::write(path, termination_message(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_final_and_fits_the_kubelet_limit() {
        let mut r = ProgressReport::at_step(7);
        r.loss = Some(0.5);
        let text = termination_message(&r);
        let back: ProgressReport = serde_json::from_str(&text).unwrap();
        assert!(back.finished);
        assert_eq!(back.step, 7);

        r.checkpoint = Some(format!("s3://b/{}", "x".repeat(5000)));
        let text = termination_message(&r);
        assert!(text.len() <= MAX_TERMINATION_MESSAGE_BYTES);
        let back: ProgressReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back.checkpoint, None);
        assert_eq!(back.loss, Some(0.5));

        // A long error is cut short (on a character boundary) before anything is dropped.
        r.checkpoint = Some("s3://b/ckpt/checkpoint-5".into());
        r.error = Some(format!("--model s3://m/x: {}", "é".repeat(3000)));
        let text = termination_message(&r);
        assert!(text.len() <= MAX_TERMINATION_MESSAGE_BYTES);
        let back: ProgressReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back.checkpoint.as_deref(), Some("s3://b/ckpt/checkpoint-5"));
        assert!(back.error.unwrap().starts_with("--model s3://m/x: é"));
    }

    #[test]
    fn writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        write_termination_message(&path, &ProgressReport::at_step(3)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"finished\":true"), "{text}");
    }
}
