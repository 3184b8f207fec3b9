//! Raw rows out of dataset files: JSON Lines, JSON, CSV and plain text, each read as
//! Hugging Face `datasets` reads them for ms-swift (`load_dataset('json'|'csv'|'text')`).
//! Rows come out one at a time; only a `.json` file is read whole (it is one JSON value).

use std::io::Read;

use serde_json::{Map, Value};

use super::error::{DataError, Position, RowError, RowOrigin};
use super::source::{ByteSource, LineError, LineReader};

/// One row as read: its fields, or why it could not be read.
pub type RawRow = (RowOrigin, Result<Map<String, Value>, RowError>);

/// A dataset file format, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `.jsonl`: one JSON object per line (blank lines skipped).
    JsonLines,
    /// `.json`: a JSON array of objects (or JSON Lines under a .json name).
    Json,
    /// `.csv`: a header row, then one row per record; values stay strings (`na_filter=False`).
    Csv,
    /// `.txt`: one row `{"text": line}` per line (pretraining text).
    Text,
}

impl FileFormat {
    /// The format of a file name, `None` for anything else.
    pub fn of(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match ext.as_str() {
            "jsonl" => FileFormat::JsonLines,
            "json" => FileFormat::Json,
            "csv" => FileFormat::Csv,
            "txt" => FileFormat::Text,
            _ => return None,
        })
    }

    /// Whether rows can be read without holding the whole file.
    pub fn streams(self) -> bool {
        !matches!(self, FileFormat::Json)
    }
}

fn io_error(source: &dyn ByteSource, e: std::io::Error) -> DataError {
    DataError::Io {
        path: source.name().into(),
        source: e,
    }
}

fn object(value: Value) -> Result<Map<String, Value>, RowError> {
    match value {
        Value::Object(map) => Ok(map),
        Value::Array(_) => Err(RowError::NotAnObject("an array")),
        Value::String(_) => Err(RowError::NotAnObject("a string")),
        Value::Number(_) => Err(RowError::NotAnObject("a number")),
        Value::Bool(_) => Err(RowError::NotAnObject("a boolean")),
        Value::Null => Err(RowError::NotAnObject("null")),
    }
}

/// The rows of lines (JSON Lines or text) from a line reader.
pub fn rows_of_lines(
    lines: LineReader,
    format: FileFormat,
) -> impl Iterator<Item = Result<RawRow, DataError>> + Send {
    let name = lines.name().to_string();
    lines.filter_map(move |line| match line {
        Err(LineError::Io(e)) => Some(Err(DataError::Io {
            path: name.clone().into(),
            source: e,
        })),
        Err(LineError::NotUtf8(origin)) => Some(Ok((
            origin,
            Err(RowError::Json("the line is not UTF-8".into())),
        ))),
        Ok(line) if format == FileFormat::Text => {
            let mut map = Map::new();
            map.insert("text".into(), Value::String(line.text));
            Some(Ok((line.origin, Ok(map))))
        }
        Ok(line) if line.text.trim().is_empty() => None,
        Ok(line) => {
            let row = serde_json::from_str::<Value>(&line.text)
                .map_err(|e| RowError::Json(e.to_string()))
                .and_then(object);
            Some(Ok((line.origin, row)))
        }
    })
}

/// The format of a file by its name, or the error naming it.
pub fn format_of(source: &dyn ByteSource) -> Result<FileFormat, DataError> {
    FileFormat::of(source.name()).ok_or_else(|| DataError::UnknownFileType {
        file: source.name().to_string(),
    })
}

/// Every row of one file.
pub fn rows(
    source: &dyn ByteSource,
    format: FileFormat,
) -> Result<Box<dyn Iterator<Item = Result<RawRow, DataError>> + Send>, DataError> {
    match format {
        FileFormat::JsonLines | FileFormat::Text => {
            let lines = LineReader::open(source).map_err(|e| io_error(source, e))?;
            Ok(Box::new(rows_of_lines(lines, format)))
        }
        FileFormat::Json => json_rows(source),
        FileFormat::Csv => csv_rows(source),
    }
}

/// A `.json` file: an array of objects; if it does not parse as one JSON value, it is read
/// as JSON Lines (Hugging Face's json loader accepts both).
fn json_rows(
    source: &dyn ByteSource,
) -> Result<Box<dyn Iterator<Item = Result<RawRow, DataError>> + Send>, DataError> {
    let mut text = String::new();
    source
        .open_at(0)
        .and_then(|mut r| r.read_to_string(&mut text))
        .map_err(|e| io_error(source, e))?;
    let file = source.name().to_string();
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => Ok(Box::new(items.into_iter().enumerate().map(
            move |(i, item)| {
                let origin = RowOrigin {
                    file: file.clone(),
                    position: Position::Element(i as u64),
                };
                Ok((origin, object(item)))
            },
        ))),
        Ok(Value::Object(map)) => {
            let origin = RowOrigin {
                file,
                position: Position::Line(1),
            };
            Ok(Box::new(std::iter::once(Ok((origin, Ok(map))))))
        }
        Ok(_) => Err(DataError::BadRow {
            origin: RowOrigin {
                file,
                position: Position::Line(1),
            },
            error: RowError::Format("a .json dataset must be an array of objects".into()),
        }),
        Err(_) => {
            let lines = LineReader::open(source).map_err(|e| io_error(source, e))?;
            Ok(Box::new(rows_of_lines(lines, FileFormat::JsonLines)))
        }
    }
}

fn csv_rows(
    source: &dyn ByteSource,
) -> Result<Box<dyn Iterator<Item = Result<RawRow, DataError>> + Send>, DataError> {
    let reader = source.open_at(0).map_err(|e| io_error(source, e))?;
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let file = source.name().to_string();
    let headers = csv
        .headers()
        .map_err(|e| DataError::BadRow {
            origin: RowOrigin {
                file: file.clone(),
                position: Position::Line(1),
            },
            error: RowError::Format(format!("CSV header: {e}")),
        })?
        .clone();
    Ok(Box::new(csv.into_records().map(move |record| {
        let (line, row) = match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                let map = headers
                    .iter()
                    .zip(record.iter())
                    .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                    .collect();
                (line, Ok(map))
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                if let csv::ErrorKind::Io(_) = e.kind() {
                    return Err(DataError::Io {
                        path: file.clone().into(),
                        source: std::io::Error::other(e.to_string()),
                    });
                }
                (line, Err(RowError::Format(format!("CSV: {e}"))))
            }
        };
        let origin = RowOrigin {
            file: file.clone(),
            position: Position::Line(line),
        };
        Ok((origin, row))
    })))
}

#[cfg(test)]
mod tests {
    use super::super::source::LocalFile;
    use super::*;

    fn read(name: &str, content: &str) -> Vec<RawRow> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let source = LocalFile::new(&path);
        rows(&source, format_of(&source).unwrap())
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn jsonl_rows_keep_line_numbers_and_report_bad_lines() {
        let rows = read("d.jsonl", "{\"a\": 1}\n\n{oops\n[1]\n{\"b\": 2}\n");
        let lines: Vec<_> = rows.iter().map(|(o, _)| o.position).collect();
        assert_eq!(
            lines,
            [
                Position::Line(1),
                Position::Line(3),
                Position::Line(4),
                Position::Line(5)
            ]
        );
        assert!(matches!(rows[1].1, Err(RowError::Json(_))));
        assert_eq!(rows[2].1, Err(RowError::NotAnObject("an array")));
        assert!(rows[3].0.to_string().ends_with("d.jsonl:5"));
    }

    #[test]
    fn json_arrays_and_json_lines_under_a_json_name() {
        let rows = read("d.json", "[{\"a\": 1}, 2]");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].0.position, Position::Element(1));
        assert!(rows[1].1.is_err());
        let rows = read("e.json", "{\"a\": 1}\n{\"a\": 2}\n");
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn csv_values_stay_strings() {
        let rows = read("d.csv", "query,response\nhi,\"hello, you\"\n,\n");
        let first = rows[0].1.as_ref().unwrap();
        assert_eq!(first["response"], "hello, you");
        assert_eq!(rows[0].0.position, Position::Line(2));
        assert_eq!(rows[1].1.as_ref().unwrap()["query"], "");
    }

    #[test]
    fn a_byte_order_mark_before_the_first_row_is_not_part_of_it() {
        let bom = "\u{feff}";
        let rows = read("d.jsonl", &format!("{bom}{{\"a\": 1}}\r\n{{\"a\": 2}}\r\n"));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1.as_ref().unwrap()["a"], 1, "{:?}", rows[0].1);
        let rows = read("d.json", &format!("{bom}[{{\"a\": 1}}]"));
        assert_eq!(rows[0].1.as_ref().unwrap()["a"], 1, "{:?}", rows[0].1);
        let rows = read("d.csv", &format!("{bom}query,response\nhi,yo\n"));
        assert_eq!(
            rows[0].1.as_ref().unwrap()["query"],
            "hi",
            "{:?}",
            rows[0].1
        );
        let rows = read("d.txt", &format!("{bom}first\nsecond\n"));
        assert_eq!(rows[0].1.as_ref().unwrap()["text"], "first");
        // Only the file's start: the same bytes inside a line are its text.
        let rows = read("e.txt", &format!("a\n{bom}b\n"));
        assert_eq!(rows[1].1.as_ref().unwrap()["text"], format!("{bom}b"));
    }

    /// An endless JSON Lines file: reading it whole would never finish.
    struct Endless;

    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let line = b"{\"query\": \"q\", \"response\": \"r\"}\n";
            let n = buf.len().min(line.len());
            buf[..n].copy_from_slice(&line[..n]);
            Ok(n)
        }
    }

    impl ByteSource for Endless {
        fn name(&self) -> &str {
            "endless.jsonl"
        }
        fn size(&self) -> std::io::Result<u64> {
            Ok(u64::MAX)
        }
        fn open_at(&self, _offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
            Ok(Box::new(Endless))
        }
    }

    #[test]
    fn json_lines_are_read_lazily() {
        let first: Vec<RawRow> = rows(&Endless, FileFormat::JsonLines)
            .unwrap()
            .take(3)
            .map(Result::unwrap)
            .collect();
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|(_, r)| r.is_ok()));
    }

    #[test]
    fn unknown_extensions_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        std::fs::write(&path, "x").unwrap();
        let err = format_of(&LocalFile::new(&path)).unwrap_err().to_string();
        assert!(
            err.contains("d.parquet") && err.contains("unsupported"),
            "{err}"
        );
    }
}
