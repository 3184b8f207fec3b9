//! Where dataset bytes come from, and reading them line by line.
//!
//! `ByteSource` is the seam for the storage layer: a local file here, an object-store
//! object there (`open_at` maps to a ranged GET). `LineReader` reads the lines of a source,
//! or only the lines that *start* inside a byte range, so each rank of a distributed job
//! can stream its own shard of a `.jsonl` file without reading the others' bytes, and a
//! resumed job can continue from a saved byte offset.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::error::{Position, RowOrigin};

/// The bytes of one dataset file.
pub trait ByteSource: Send + Sync {
    /// The path or URI, for messages and for choosing the format by extension.
    fn name(&self) -> &str;
    /// Total size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// A reader over the bytes from `offset` to the end.
    fn open_at(&self, offset: u64) -> io::Result<Box<dyn Read + Send>>;
}

/// A file on the local disk.
#[derive(Debug, Clone)]
pub struct LocalFile {
    path: PathBuf,
    name: String,
}

impl LocalFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path.display().to_string();
        LocalFile { path, name }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ByteSource for LocalFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> io::Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    fn open_at(&self, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let mut file = File::open(&self.path)?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        Ok(Box::new(file))
    }
}

/// The byte range rank `rank` of `world` reads: equal slices, the last one takes the rest.
pub fn shard_range(size: u64, rank: u64, world: u64) -> Range<u64> {
    let world = world.max(1);
    let per = size / world;
    let start = per * rank;
    let end = if rank + 1 >= world { size } else { start + per };
    start..end
}

/// One line of text (newline removed) and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub origin: RowOrigin,
    /// Offset of the line's first byte: where a resumed reader starts again.
    pub offset: u64,
}

/// The UTF-8 byte order mark, which some editors write at the start of a text file.
pub const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// Lines of a source, or those starting in a byte range (a line belongs to the range its
/// first byte falls in, so adjacent ranges split a file into disjoint sets of whole lines).
pub struct LineReader {
    reader: BufReader<Box<dyn Read + Send>>,
    name: String,
    /// Offset of the next unread byte.
    pos: u64,
    end: Option<u64>,
    /// Line number of the next line, when reading from the start of the file.
    line_no: Option<u64>,
    buf: Vec<u8>,
    done: bool,
}

impl LineReader {
    /// All lines of a source.
    pub fn open(source: &dyn ByteSource) -> io::Result<Self> {
        Self::open_range(source, 0, None)
    }

    /// Lines whose first byte lies in `[start, end)` (`end` `None`: to the end).
    pub fn open_range(source: &dyn ByteSource, start: u64, end: Option<u64>) -> io::Result<Self> {
        let name = source.name().to_string();
        if start == 0 {
            return Ok(LineReader {
                reader: BufReader::new(source.open_at(0)?),
                name,
                pos: 0,
                end,
                line_no: Some(1),
                buf: Vec::new(),
                done: false,
            });
        }
        // Start one byte early and drop the partial line: if `start` is exactly the first
        // byte of a line, the byte before it is the previous newline and nothing is lost.
        let mut reader = BufReader::new(source.open_at(start - 1)?);
        let mut skipped = Vec::new();
        let n = reader.read_until(b'\n', &mut skipped)?;
        Ok(LineReader {
            reader,
            name,
            pos: start - 1 + n as u64,
            end,
            line_no: None,
            buf: Vec::new(),
            done: false,
        })
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn origin(&self, offset: u64, line_no: Option<u64>) -> RowOrigin {
        RowOrigin {
            file: self.name.clone(),
            position: match line_no {
                Some(n) => Position::Line(n),
                None => Position::Byte(offset),
            },
        }
    }
}

/// A line that could not be read: an I/O error, or bytes that are not UTF-8.
#[derive(Debug)]
pub enum LineError {
    Io(io::Error),
    NotUtf8(RowOrigin),
}

impl Iterator for LineReader {
    type Item = Result<Line, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.end.is_some_and(|end| self.pos >= end) {
            return None;
        }
        self.buf.clear();
        let n = match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => {
                self.done = true;
                return None;
            }
            Ok(n) => n,
            Err(e) => {
                self.done = true;
                return Some(Err(LineError::Io(e)));
            }
        };
        let offset = self.pos;
        self.pos += n as u64;
        let line_no = self.line_no;
        if let Some(l) = &mut self.line_no {
            *l += 1;
        }
        let origin = self.origin(offset, line_no);
        let mut bytes = self.buf.as_slice();
        if offset == 0 {
            // Editors on Windows start UTF-8 files with a byte order mark; it is not part
            // of the first row (without this the first JSON line never parses).
            bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        }
        if let Some(rest) = bytes.strip_suffix(b"\n") {
            bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        Some(match std::str::from_utf8(bytes) {
            Ok(text) => Ok(Line {
                text: text.to_string(),
                origin,
                offset,
            }),
            Err(_) => Err(LineError::NotUtf8(origin)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(source: &LocalFile, range: Range<u64>) -> Vec<String> {
        LineReader::open_range(source, range.start, Some(range.end))
            .unwrap()
            .map(|l| l.unwrap().text)
            .collect()
    }

    #[test]
    fn shards_split_a_file_into_disjoint_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let content: String = (0..50).map(|i| format!("{{\"i\": {i}}}\n")).collect();
        std::fs::write(&path, &content).unwrap();
        let source = LocalFile::new(&path);
        let size = source.size().unwrap();
        for world in 1..=7 {
            let mut all = Vec::new();
            for rank in 0..world {
                all.extend(lines(&source, shard_range(size, rank, world)));
            }
            let expected: Vec<String> = content.lines().map(str::to_string).collect();
            assert_eq!(all, expected, "world {world}");
        }
    }

    #[test]
    fn line_numbers_and_offsets_allow_resuming() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "a\r\nbb\n\nccc").unwrap();
        let source = LocalFile::new(&path);
        let got: Vec<Line> = LineReader::open(&source)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let texts: Vec<&str> = got.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a", "bb", "", "ccc"]);
        assert_eq!(got[3].origin.position, Position::Line(4));
        let resumed: Vec<String> = LineReader::open_range(&source, got[1].offset, None)
            .unwrap()
            .map(|l| l.unwrap().text)
            .collect();
        assert_eq!(resumed, ["bb", "", "ccc"]);
    }
}
