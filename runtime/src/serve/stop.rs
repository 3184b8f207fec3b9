//! Stop strings as OpenAI applies them: the returned text ends before the first stop
//! string and never contains it. The engine stops as soon as one appears; while streaming,
//! text that could be the start of a stop string is held back until it is known not to be.

/// Filters one choice's text stream.
#[derive(Debug, Clone)]
pub struct StopFilter {
    stops: Vec<String>,
    /// Bytes held back: one less than the longest stop string.
    hold: usize,
    text: String,
    /// Bytes of `text` already released.
    sent: usize,
    /// Where a stop string begins, once seen.
    cut: Option<usize>,
}

impl StopFilter {
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let hold = stops.iter().map(String::len).max().unwrap_or(1) - 1;
        StopFilter {
            stops,
            hold,
            text: String::new(),
            sent: 0,
            cut: None,
        }
    }

    /// Adds generated text; returns what may be shown now.
    pub fn push(&mut self, delta: &str) -> String {
        if self.cut.is_some() {
            return String::new();
        }
        // A stop string can only start within `hold` bytes before the new text.
        let search_from = floor_boundary(&self.text, self.text.len().saturating_sub(self.hold));
        self.text.push_str(delta);
        self.cut = self
            .stops
            .iter()
            .filter_map(|s| self.text[search_from..].find(s.as_str()))
            .min()
            .map(|i| search_from + i);
        let end = match self.cut {
            Some(c) => c,
            None => floor_boundary(&self.text, self.text.len().saturating_sub(self.hold)),
        };
        self.release(end)
    }

    /// The generation ended: releases the held-back rest (up to a stop string).
    pub fn finish(&mut self) -> String {
        let end = self.cut.unwrap_or(self.text.len());
        self.release(end)
    }

    /// Everything pushed so far, shown or not.
    pub fn pushed(&self) -> &str {
        &self.text
    }

    /// Everything released, i.e. the choice's final text.
    pub fn released(&self) -> &str {
        &self.text[..self.sent]
    }

    fn release(&mut self, end: usize) -> String {
        if end <= self.sent {
            return String::new();
        }
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The text of a finished generation, cut before its first stop string.
pub fn trim_at_stop(text: &str, stops: &[String]) -> String {
    let mut f = StopFilter::new(stops);
    let mut out = f.push(text);
    out.push_str(&f.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out: Vec<String> = pieces.iter().map(|p| f.push(p)).collect();
        out.push(f.finish());
        (out, f.released().to_string())
    }

    #[test]
    fn a_stop_split_across_deltas_is_never_shown() {
        let (pieces, all) = stream(&["END"], &["hello E", "N", "D and more"]);
        assert_eq!(all, "hello ");
        assert!(pieces.iter().all(|p| !p.contains('E')), "{pieces:?}");
    }

    #[test]
    fn text_is_released_as_soon_as_it_cannot_start_a_stop() {
        let (pieces, all) = stream(&["xyz"], &["abcdef", "gh"]);
        assert_eq!(pieces[0], "abcd");
        assert_eq!(all, "abcdefgh");
    }

    #[test]
    fn without_stops_everything_passes_through() {
        let (pieces, all) = stream(&[], &["a", "bé", "c"]);
        assert_eq!(pieces, vec!["a", "bé", "c", ""]);
        assert_eq!(all, "abéc");
    }

    #[test]
    fn the_earliest_stop_wins_and_multibyte_text_is_not_split() {
        assert_eq!(
            trim_at_stop("ééé<b>x<a>", &["<a>".into(), "<b>".into()]),
            "ééé"
        );
        let (pieces, _) = stream(&["ab"], &["ééé"]);
        assert!(
            pieces
                .iter()
                .all(|p| std::str::from_utf8(p.as_bytes()).is_ok())
        );
        assert_eq!(pieces.concat(), "ééé");
    }
}
