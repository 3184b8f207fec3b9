//! `--report_to tensorboard`: scalar event files TensorBoard reads, written by hand (the
//! format is a TFRecord stream of `Event` protobufs; scalars need five fields of it).
//! Tags follow HF's TensorBoardCallback: `train/loss`, `eval/loss`, ...

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends scalar summaries to one `events.out.tfevents.*` file.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// TFRecord's masked CRC-32C.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, key: u8, bytes: &[u8]) {
    out.push(key);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `Event { wall_time = 1; step = 2; file_version = 3 | summary = 5 }`.
fn event(wall_time: f64, step: i64, body_key: u8, body: &[u8]) -> Vec<u8> {
    let mut e = vec![0x09];
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10);
    varint(&mut e, step as u64);
    bytes_field(&mut e, body_key, body);
    e
}

/// `Summary { value = 1: Value { tag = 1; simple_value = 2 } }`.
fn scalar_summary(tag: &str, value: f32) -> Vec<u8> {
    let mut v = Vec::new();
    bytes_field(&mut v, 0x0a, tag.as_bytes());
    v.push(0x15);
    v.extend_from_slice(&value.to_le_bytes());
    let mut s = Vec::new();
    bytes_field(&mut s, 0x0a, &v);
    s
}

/// HF's `rewrite_logs`: `eval_loss` -> `eval/loss`, `loss` -> `train/loss`.
pub fn tag_for(key: &str) -> String {
    match key.strip_prefix("eval_") {
        Some(rest) => format!("eval/{rest}"),
        None => format!("train/{key}"),
    }
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<time>.<host>.<pid>.0` and writes the version record.
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let name = format!(
            "events.out.tfevents.{}.{host}.{}.0",
            now() as u64,
            std::process::id()
        );
        let path = dir.join(name);
        let mut w = EventWriter {
            file: BufWriter::new(File::create(&path)?),
            path,
        };
        w.record(&event(now(), 0, 0x1a, b"brain.Event:2"))?;
        w.file.flush()?;
        Ok(w)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.file.write_all(&len)?;
        self.file.write_all(&masked_crc(&len).to_le_bytes())?;
        self.file.write_all(data)?;
        self.file.write_all(&masked_crc(data).to_le_bytes())
    }

    /// Writes one scalar at `step` and flushes, so a killed run keeps what it logged.
    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) -> io::Result<()> {
        let summary = scalar_summary(tag, value as f32);
        self.record(&event(now(), step as i64, 0x2a, &summary))?;
        self.file.flush()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reads back (tag, value, step) of every scalar event, checking both CRCs.
    pub(crate) fn read_scalars(path: &Path) -> Vec<(String, f32, u64)> {
        let data = std::fs::read(path).unwrap();
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let len_bytes = &data[i..i + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(data[i + 8..i + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc(len_bytes));
            let body = &data[i + 12..i + 12 + len];
            let crc = u32::from_le_bytes(data[i + 12 + len..i + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(body));
            i += 16 + len;
            // body: 0x09 + 8 bytes wall time, 0x10 + varint step, then key + len + payload
            let mut j = 9;
            assert_eq!(body[j], 0x10);
            j += 1;
            let (mut step, mut shift) = (0u64, 0);
            loop {
                let b = body[j];
                j += 1;
                step |= ((b & 0x7f) as u64) << shift;
                shift += 7;
                if b < 0x80 {
                    break;
                }
            }
            if body[j] != 0x2a {
                continue; // the file-version record
            }
            // summary -> value -> tag, simple_value (all short here: one-byte lengths)
            let value = &body[j + 4..];
            let tag_len = value[1] as usize;
            let tag = String::from_utf8(value[2..2 + tag_len].to_vec()).unwrap();
            assert_eq!(value[2 + tag_len], 0x15);
            let v = f32::from_le_bytes(value[3 + tag_len..7 + tag_len].try_into().unwrap());
            out.push((tag, v, step));
        }
        out
    }

    #[test]
    fn crc_matches_the_tfrecord_reference() {
        // crc32c("123456789") = 0xe3069283 (RFC 3720 check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            masked_crc(b""),
            0u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn writes_scalars_tensorboard_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar(&tag_for("loss"), 2.5, 1).unwrap();
        w.scalar(&tag_for("eval_loss"), 1.25, 300).unwrap();
        let scalars = read_scalars(w.path());
        assert_eq!(
            scalars,
            vec![
                ("train/loss".into(), 2.5, 1),
                ("eval/loss".into(), 1.25, 300)
            ]
        );
        assert!(
            w.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        );
    }
}
