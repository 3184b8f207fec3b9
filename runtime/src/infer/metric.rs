//! `--metric acc|rouge` over (response, labels) pairs, as ms-swift's `_calc_metric`:
//! `acc` is exact string equality; `rouge` gives ROUGE-1/2/L F1 and BLEU-4 averaged over
//! rows, on word tokens (CJK characters count as words, as jieba would split them).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

/// Exact-match accuracy over rows that have labels.
pub fn accuracy(pairs: &[(String, Option<String>)]) -> Value {
    let scored: Vec<bool> = pairs
        .iter()
        .filter_map(|(pred, label)| label.as_ref().map(|l| pred == l))
        .collect();
    let acc = if scored.is_empty() {
        0.0
    } else {
        scored.iter().filter(|&&b| b).count() as f64 / scored.len() as f64
    };
    json!({ "acc": acc })
}

/// Mean ROUGE-1/2/L F1 and BLEU-4 over rows that have labels.
pub fn rouge(pairs: &[(String, Option<String>)]) -> Value {
    let mut sums = [0f64; 4];
    let mut n = 0usize;
    for (pred, label) in pairs {
        let Some(label) = label else { continue };
        let (p, r) = (words(pred), words(label));
        sums[0] += rouge_n(&p, &r, 1);
        sums[1] += rouge_n(&p, &r, 2);
        sums[2] += rouge_l(&p, &r);
        sums[3] += bleu4(&p, &r);
        n += 1;
    }
    let mut out = Map::new();
    for (name, s) in ["rouge-1", "rouge-2", "rouge-l", "bleu-4"].iter().zip(sums) {
        out.insert(
            (*name).into(),
            json!(if n == 0 { 0.0 } else { s / n as f64 }),
        );
    }
    Value::Object(out)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x3040..=0x30FF | 0xAC00..=0xD7AF)
}

/// Lower-cased word tokens: runs of letters/digits, single CJK characters, single symbols.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() && !is_cjk(c) {
            cur.extend(c.to_lowercase());
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

fn overlap(a: &HashMap<&[String], usize>, b: &HashMap<&[String], usize>) -> usize {
    a.iter()
        .map(|(g, &c)| c.min(b.get(g).copied().unwrap_or(0)))
        .sum()
}

fn f1(matches: usize, pred_total: usize, ref_total: usize) -> f64 {
    if matches == 0 || pred_total == 0 || ref_total == 0 {
        return 0.0;
    }
    let p = matches as f64 / pred_total as f64;
    let r = matches as f64 / ref_total as f64;
    2.0 * p * r / (p + r)
}

fn rouge_n(pred: &[String], reference: &[String], n: usize) -> f64 {
    let (p, r) = (ngrams(pred, n), ngrams(reference, n));
    f1(overlap(&p, &r), p.values().sum(), r.values().sum())
}

fn rouge_l(pred: &[String], reference: &[String]) -> f64 {
    let mut prev = vec![0usize; reference.len() + 1];
    for a in pred {
        let mut cur = vec![0usize; reference.len() + 1];
        for (j, b) in reference.iter().enumerate() {
            cur[j + 1] = if a == b {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    f1(prev[reference.len()], pred.len(), reference.len())
}

/// Sentence BLEU-4 with NLTK's smoothing method 3 (zero counts become 1/2^k).
fn bleu4(pred: &[String], reference: &[String]) -> f64 {
    if pred.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let mut log_sum = 0.0;
    let mut k = 1;
    for n in 1..=4 {
        let p = ngrams(pred, n);
        let total: usize = p.values().sum();
        if total == 0 {
            return 0.0;
        }
        let m = overlap(&p, &ngrams(reference, n));
        let precision = if m == 0 {
            k *= 2;
            1.0 / (k as f64 * total as f64)
        } else {
            m as f64 / total as f64
        };
        log_sum += precision.ln() / 4.0;
    }
    let (c, r) = (pred.len() as f64, reference.len() as f64);
    let brevity = if c > r { 1.0 } else { (1.0 - r / c).exp() };
    brevity * log_sum.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: Option<&str>) -> (String, Option<String>) {
        (a.to_string(), b.map(String::from))
    }

    #[test]
    fn accuracy_is_exact_match_over_labelled_rows() {
        let v = accuracy(&[
            pair("Paris", Some("Paris")),
            pair("Lyon", Some("Paris")),
            pair("x", None),
        ]);
        assert_eq!(v["acc"], json!(0.5));
    }

    #[test]
    fn rouge_is_one_for_identical_and_zero_for_disjoint() {
        let same = rouge(&[pair(
            "the cat sat on the mat",
            Some("the cat sat on the mat"),
        )]);
        for k in ["rouge-1", "rouge-2", "rouge-l", "bleu-4"] {
            assert!((same[k].as_f64().unwrap() - 1.0).abs() < 1e-9, "{k}");
        }
        let none = rouge(&[pair("alpha beta", Some("gamma delta"))]);
        assert_eq!(none["rouge-1"], json!(0.0));
        let partial = rouge(&[pair("the cat sat", Some("the cat sat on the mat"))]);
        let r1 = partial["rouge-1"].as_f64().unwrap();
        assert!((r1 - 2.0 * 1.0 * 0.5 / 1.5).abs() < 1e-9, "{r1}");
    }

    #[test]
    fn words_split_cjk_characters_and_punctuation() {
        assert_eq!(words("Hello, 世界!"), vec!["hello", ",", "世", "界", "!"]);
    }
}
