//! Datasets: `.jsonl` files streamed line by line with ranged reads (memory stays at a
//! few blocks however large the file), other formats downloaded to the cache.
//!
//! Sharding for data-parallel ranks is by bytes: rank r of w owns the lines whose first
//! byte lies in `[r*size/w, (r+1)*size/w)`, so each rank reads about 1/w of the file and
//! every line is read by exactly one rank. A shard that starts mid-file does not know how
//! many lines precede it, so its lines carry byte offsets but no line numbers.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStoreExt};

use crate::storage::cache::Cache;
use crate::storage::client::Remote;
use crate::storage::error::{Result, StorageError};
use crate::storage::location::Location;

/// Which part of a file one data-parallel rank reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank, `0..world`.
    pub rank: u64,
    /// Number of ranks.
    pub world: u64,
}

impl Shard {
    /// The whole file.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// Rank `rank` of `world`; refuses impossible pairs.
    pub fn new(rank: u64, world: u64) -> Result<Shard> {
        if world == 0 || rank >= world {
            return Err(StorageError::BadSetting {
                name: "rank/world".into(),
                value: format!("{rank}/{world}"),
                reason: "rank must be below a non-zero world size".into(),
            });
        }
        Ok(Shard { rank, world })
    }

    /// The bytes whose lines this rank owns in a file of `size` bytes.
    pub fn byte_range(&self, size: u64) -> Range<u64> {
        let at = |r: u64| ((size as u128 * r as u128) / self.world.max(1) as u128) as u64;
        at(self.rank)..at(self.rank + 1)
    }
}

/// One line of a dataset file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the file; None for shards that start mid-file.
    pub number: Option<u64>,
    /// Byte offset of the line's first byte in the file.
    pub offset: u64,
    /// The line without its line ending.
    pub text: String,
}

impl Line {
    /// "line N" or "the line at byte N", for error messages.
    pub fn position(&self) -> String {
        position(self.number, self.offset)
    }

    /// Parses the line as a JSON object; the error names file and line.
    pub fn json_object(&self, uri: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
        let bad = |reason: String| StorageError::BadLine {
            uri: uri.to_string(),
            position: self.position(),
            reason,
        };
        match serde_json::from_str::<serde_json::Value>(&self.text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(other) => Err(bad(format!(
                "expected a JSON object, found {}",
                json_kind(&other)
            ))),
            Err(e) => Err(bad(format!(
                "not valid JSON ({e}); is this a JSON lines file?"
            ))),
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn position(number: Option<u64>, offset: u64) -> String {
    match number {
        Some(n) => format!("line {n}"),
        None => format!("the line at byte {offset}"),
    }
}

/// Streaming settings.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Bytes per ranged read.
    pub block_size: u64,
    /// Blocks fetched ahead of the one being split.
    pub read_ahead: usize,
    /// Longest line accepted; beyond it the file is taken for something else.
    pub max_line_bytes: usize,
    /// Attempts per block when the body breaks off (requests are also retried by the client).
    pub block_attempts: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            block_size: 4 << 20,
            read_ahead: 2,
            max_line_bytes: 64 << 20,
            block_attempts: 3,
        }
    }
}

/// A line found by [`LineSplitter`], bytes not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// Line number when known.
    pub number: Option<u64>,
    /// Offset of the first byte.
    pub offset: u64,
    /// Bytes without `\n` / `\r\n`.
    pub bytes: Vec<u8>,
}

/// Cuts consecutive blocks of a file into the lines one shard owns. Pure: the remote
/// stream and the local reader both feed it, and its rules are unit-tested on bytes.
#[derive(Debug)]
pub struct LineSplitter {
    range: Range<u64>,
    /// File offset of the next byte to be fed.
    pos: u64,
    /// Bytes of the line in progress and where it started.
    carry: Vec<u8>,
    carry_start: u64,
    /// Still skipping the tail of a line owned by the previous shard.
    skipping: bool,
    next_number: Option<u64>,
    max_line: usize,
    done: bool,
}

impl LineSplitter {
    /// A splitter for the lines starting in `range`; feeding must begin at
    /// [`read_from`](Self::read_from).
    pub fn new(range: Range<u64>, max_line: usize) -> LineSplitter {
        let start = range.start;
        LineSplitter {
            pos: start.saturating_sub(1),
            carry_start: start,
            skipping: start > 0,
            next_number: (start == 0).then_some(1),
            carry: Vec::new(),
            max_line,
            done: range.is_empty(),
            range,
        }
    }

    /// The file offset reading must start at: one byte early, to see whether the shard
    /// begins exactly at a line start.
    pub fn read_from(&self) -> u64 {
        self.range.start.saturating_sub(1)
    }

    /// True once the shard's last line has been produced; no more bytes are needed.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feeds the next block; complete lines are appended to `out`. Err is a reason text
    /// (the caller knows the URI).
    pub fn feed(
        &mut self,
        block: &[u8],
        out: &mut Vec<RawLine>,
    ) -> std::result::Result<(), (u64, String)> {
        let mut rest = block;
        let mut at = self.pos;
        self.pos += block.len() as u64;
        while !rest.is_empty() && !self.done {
            if self.skipping {
                match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        self.skipping = false;
                        at += i as u64 + 1;
                        rest = &rest[i + 1..];
                        self.carry_start = at;
                        if at >= self.range.end {
                            self.done = true;
                        }
                    }
                    None => return Ok(()),
                }
                continue;
            }
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    self.carry.extend_from_slice(&rest[..i]);
                    self.check_len()?;
                    self.emit(out);
                    at += i as u64 + 1;
                    rest = &rest[i + 1..];
                    self.carry_start = at;
                    if at >= self.range.end {
                        self.done = true;
                    }
                }
                None => {
                    self.carry.extend_from_slice(rest);
                    self.check_len()?;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// End of file: the last line may lack a trailing newline.
    pub fn finish(&mut self, out: &mut Vec<RawLine>) {
        if !self.done
            && !self.skipping
            && !self.carry.is_empty()
            && self.carry_start < self.range.end
        {
            self.emit(out);
        }
        self.done = true;
    }

    fn check_len(&self) -> std::result::Result<(), (u64, String)> {
        if self.carry.len() > self.max_line {
            return Err((
                self.carry_start,
                format!(
                    "line is longer than {} bytes; is this a JSON lines file?",
                    self.max_line
                ),
            ));
        }
        Ok(())
    }

    fn emit(&mut self, out: &mut Vec<RawLine>) {
        let mut bytes = std::mem::take(&mut self.carry);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        out.push(RawLine {
            number: self.next_number,
            offset: self.carry_start,
            bytes,
        });
        self.next_number = self.next_number.map(|n| n + 1);
    }
}

/// Decodes raw lines, skipping blank ones (they still count for line numbers).
fn decode(uri: &str, raw: RawLine) -> Option<Result<Line>> {
    match String::from_utf8(raw.bytes) {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some(Ok(Line {
            number: raw.number,
            offset: raw.offset,
            text,
        })),
        Err(_) => Some(Err(StorageError::BadLine {
            uri: uri.to_string(),
            position: position(raw.number, raw.offset),
            reason: "not UTF-8 text; is this a JSON lines file?".into(),
        })),
    }
}

/// Streams the lines of one shard of a remote text file. `meta` (size, ETag) pins the
/// object version; a file replaced mid-stream ends the stream with an error instead of
/// mixing versions.
pub fn stream_remote_lines(
    remote: Remote,
    meta: ObjectMeta,
    shard: Shard,
    opts: StreamOptions,
) -> impl Stream<Item = Result<Line>> + Send + 'static {
    let uri = remote.location.to_string();
    let range = shard.byte_range(meta.size);
    let splitter = LineSplitter::new(range, opts.max_line_bytes);
    let state = RemoteReader {
        next_block: splitter.read_from(),
        splitter,
        remote,
        meta,
        opts,
        inflight: VecDeque::new(),
        ready: VecDeque::new(),
        uri,
        failed: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next_line().await?;
        Some((item, state))
    })
}

type BlockFuture = tokio::task::JoinHandle<Result<Bytes>>;

struct RemoteReader {
    remote: Remote,
    meta: ObjectMeta,
    opts: StreamOptions,
    splitter: LineSplitter,
    next_block: u64,
    inflight: VecDeque<BlockFuture>,
    ready: VecDeque<RawLine>,
    uri: String,
    failed: bool,
}

impl RemoteReader {
    async fn next_line(&mut self) -> Option<Result<Line>> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(raw) = self.ready.pop_front() {
                match decode(&self.uri, raw) {
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                    Some(ok) => return Some(ok),
                    None => continue,
                }
            }
            if self.splitter.is_done() {
                self.inflight.clear();
                return None;
            }
            self.fill_pipeline();
            let Some(handle) = self.inflight.pop_front() else {
                let mut out = Vec::new();
                self.splitter.finish(&mut out);
                self.ready.extend(out);
                if self.ready.is_empty() {
                    return None;
                }
                continue;
            };
            let block = match handle.await {
                Ok(Ok(block)) => block,
                Ok(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(StorageError::Task {
                        op: "read block",
                        uri: self.uri.clone(),
                        reason: e.to_string(),
                    }));
                }
            };
            let mut out = Vec::new();
            if let Err((offset, reason)) = self.splitter.feed(&block, &mut out) {
                self.failed = true;
                return Some(Err(StorageError::BadLine {
                    uri: self.uri.clone(),
                    position: position(None, offset),
                    reason,
                }));
            }
            self.ready.extend(out);
        }
    }

    /// Keeps `read_ahead + 1` block reads in flight.
    fn fill_pipeline(&mut self) {
        while self.inflight.len() <= self.opts.read_ahead && self.next_block < self.meta.size {
            let start = self.next_block;
            let end = (start + self.opts.block_size.max(1)).min(self.meta.size);
            self.next_block = end;
            let remote = self.remote.clone();
            let meta = self.meta.clone();
            let attempts = self.opts.block_attempts.max(1);
            self.inflight.push_back(tokio::spawn(async move {
                fetch_block(&remote, &meta, start..end, attempts).await
            }));
        }
    }
}

impl Drop for RemoteReader {
    fn drop(&mut self) {
        for handle in &self.inflight {
            handle.abort();
        }
    }
}

pub(crate) async fn fetch_block(
    remote: &Remote,
    meta: &ObjectMeta,
    range: Range<u64>,
    attempts: usize,
) -> Result<Bytes> {
    let uri = remote.location.to_string();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let options = GetOptions {
            if_match: meta.e_tag.clone(),
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let result = match remote.store.get_opts(&meta.location, options).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(bytes) if bytes.len() as u64 == range.end - range.start => return Ok(bytes),
            Ok(bytes) => {
                return Err(StorageError::Corrupt {
                    uri,
                    reason: format!("range {range:?} returned {} bytes", bytes.len()),
                });
            }
            Err(object_store::Error::Precondition { .. }) => {
                return Err(StorageError::Changed {
                    uri,
                    expected: meta.e_tag.clone().unwrap_or_default(),
                    found: "a newer version".into(),
                });
            }
            Err(e) if attempt >= attempts => return Err(StorageError::remote("read", uri, e)),
            Err(e) => {
                tracing::warn!(%uri, attempt, error = %e, "block read failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * (1 << attempt.min(6)))).await;
            }
        }
    }
}

/// Reads one shard of a local text file with the same rules as the remote stream.
pub fn local_lines(path: &Path, shard: Shard, opts: StreamOptions) -> Result<LocalLines> {
    let file = std::fs::File::open(path).map_err(|e| StorageError::io("open", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    let splitter = LineSplitter::new(shard.byte_range(size), opts.max_line_bytes);
    let mut file = file;
    file.seek(SeekFrom::Start(splitter.read_from()))
        .map_err(|e| StorageError::io("seek", path, e))?;
    Ok(LocalLines {
        file,
        path: path.to_path_buf(),
        splitter,
        ready: VecDeque::new(),
        buf: vec![0; opts.block_size.clamp(4096, 16 << 20) as usize],
        failed: false,
    })
}

/// Iterator over one shard of a local file's lines.
#[derive(Debug)]
pub struct LocalLines {
    file: std::fs::File,
    path: PathBuf,
    splitter: LineSplitter,
    ready: VecDeque<RawLine>,
    buf: Vec<u8>,
    failed: bool,
}

impl Iterator for LocalLines {
    type Item = Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        let uri = self.path.display().to_string();
        loop {
            if self.failed {
                return None;
            }
            if let Some(raw) = self.ready.pop_front() {
                match decode(&uri, raw) {
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                    Some(ok) => return Some(ok),
                    None => continue,
                }
            }
            if self.splitter.is_done() {
                return None;
            }
            let n = match self.file.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(StorageError::io("read", &self.path, e)));
                }
            };
            let mut out = Vec::new();
            if n == 0 {
                self.splitter.finish(&mut out);
            } else if let Err((offset, reason)) = self.splitter.feed(&self.buf[..n], &mut out) {
                self.failed = true;
                return Some(Err(StorageError::BadLine {
                    uri,
                    position: position(None, offset),
                    reason,
                }));
            }
            self.ready.extend(out);
        }
    }
}

/// A blocking iterator over a dataset's lines (local path or URI), for code that is not
/// async: a background thread runs the stream and hands lines over a bounded channel, so
/// memory stays flat and dropping the iterator stops the reads.
#[derive(Debug)]
pub struct LineIter {
    rx: std::sync::mpsc::Receiver<Result<Line>>,
}

impl LineIter {
    /// Opens `uri` (`.jsonl` or other line-oriented text) for one shard.
    pub fn open(uri: &str, shard: Shard, opts: StreamOptions) -> Result<LineIter> {
        match Location::parse(uri)? {
            Location::Local(path) => {
                let lines = local_lines(&path, shard, opts)?;
                Ok(Self::spawn_with(move |tx| {
                    for line in lines {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }))
            }
            // The client is built on the reader's own runtime (see `Remote::open`).
            Location::Remote(loc) => {
                Ok(Self::spawn_remote(move || Remote::open(&loc), shard, opts))
            }
        }
    }

    /// Streams one shard of a remote file through the given client.
    pub fn open_remote(remote: Remote, shard: Shard, opts: StreamOptions) -> Result<LineIter> {
        Ok(Self::spawn_remote(move || Ok(remote), shard, opts))
    }

    fn spawn_remote(
        open: impl FnOnce() -> Result<Remote> + Send + 'static,
        shard: Shard,
        opts: StreamOptions,
    ) -> LineIter {
        Self::spawn_with(move |tx| {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(StorageError::Task {
                        op: "start reader",
                        uri: "dataset".into(),
                        reason: e.to_string(),
                    }));
                    return;
                }
            };
            runtime.block_on(async move {
                use futures::StreamExt;
                let remote = match open() {
                    Ok(remote) => remote,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let uri = remote.location.to_string();
                let meta = match remote.store.head(&remote.location.object_path()).await {
                    Ok(meta) => meta,
                    Err(e) => {
                        let _ = tx.send(Err(StorageError::remote("read", &uri, e)));
                        return;
                    }
                };
                let stream = stream_remote_lines(remote, meta, shard, opts);
                futures::pin_mut!(stream);
                while let Some(item) = stream.next().await {
                    if tx.send(item).is_err() {
                        break;
                    }
                }
            });
        })
    }

    fn spawn_with(
        body: impl FnOnce(std::sync::mpsc::SyncSender<Result<Line>>) + Send + 'static,
    ) -> LineIter {
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        std::thread::spawn(move || body(tx));
        LineIter { rx }
    }
}

impl Iterator for LineIter {
    type Item = Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// How a dataset file is read.
#[derive(Debug)]
pub enum DatasetSource {
    /// A `.jsonl` file in a bucket, read as a stream of lines.
    StreamedJsonl(Remote),
    /// A file on local disk (given locally, or downloaded to the cache).
    LocalFile(PathBuf),
}

/// Decides how to read `uri`: remote `.jsonl` files stream, remote files of other
/// formats are downloaded into the cache, local paths pass through.
pub async fn open_dataset(uri: &str, cache: &Cache) -> Result<DatasetSource> {
    match Location::parse(uri)? {
        Location::Local(path) => Ok(DatasetSource::LocalFile(path)),
        Location::Remote(loc) => {
            let remote = Remote::open(&loc)?;
            if is_jsonl(&loc.key) {
                Ok(DatasetSource::StreamedJsonl(remote))
            } else {
                Ok(DatasetSource::LocalFile(
                    cache.materialize_remote(&remote).await?.path,
                ))
            }
        }
    }
}

/// `.jsonl` (any case) is streamed.
pub fn is_jsonl(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".jsonl")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &[u8], shard: Shard, block: usize) -> Vec<(Option<u64>, u64, String)> {
        let mut s = LineSplitter::new(shard.byte_range(text.len() as u64), 1 << 20);
        let mut out = Vec::new();
        let mut pos = s.read_from() as usize;
        while pos < text.len() && !s.is_done() {
            let end = (pos + block).min(text.len());
            s.feed(&text[pos..end], &mut out).unwrap();
            pos = end;
        }
        s.finish(&mut out);
        out.into_iter()
            .map(|r| (r.number, r.offset, String::from_utf8(r.bytes).unwrap()))
            .collect()
    }

    #[test]
    fn whole_file_lines_have_numbers_offsets_and_no_line_endings() {
        let text = b"{\"a\":1}\r\n\n{\"b\":2}\nlast";
        let lines = split(text, Shard::WHOLE, 3);
        assert_eq!(
            lines,
            vec![
                (Some(1), 0, "{\"a\":1}".to_string()),
                (Some(2), 9, String::new()),
                (Some(3), 10, "{\"b\":2}".to_string()),
                (Some(4), 18, "last".to_string()),
            ]
        );
    }

    #[test]
    fn shards_partition_the_lines_for_every_world_size_and_block_size() {
        let text: Vec<u8> = (0..97)
            .map(|i| format!("{{\"i\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 13)))
            .collect::<String>()
            .into_bytes();
        let whole: Vec<u64> = split(&text, Shard::WHOLE, 1 << 20)
            .iter()
            .map(|l| l.1)
            .collect();
        for world in 1..=7 {
            for block in [1, 5, 64, 1 << 20] {
                let mut offsets = Vec::new();
                for rank in 0..world {
                    let shard = Shard::new(rank, world).unwrap();
                    let lines = split(&text, shard, block);
                    let range = shard.byte_range(text.len() as u64);
                    for (number, offset, _) in &lines {
                        assert!(
                            range.contains(offset),
                            "rank {rank}/{world}: {offset} not in {range:?}"
                        );
                        assert_eq!(number.is_some(), rank == 0);
                    }
                    offsets.extend(lines.iter().map(|l| l.1));
                }
                assert_eq!(offsets, whole, "world {world}, block {block}");
            }
        }
    }

    #[test]
    fn a_shard_starting_exactly_at_a_line_start_owns_that_line() {
        let text = b"aaaa\nbbbb\n";
        // Byte 5 is 'b', the first byte of line 2; rank 1 of 2 starts there.
        assert_eq!(Shard::new(1, 2).unwrap().byte_range(10), 5..10);
        let lines = split(text, Shard::new(1, 2).unwrap(), 2);
        assert_eq!(lines, vec![(None, 5, "bbbb".to_string())]);
        assert_eq!(
            split(text, Shard::new(0, 2).unwrap(), 2),
            vec![(Some(1), 0, "aaaa".to_string())]
        );
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut s = LineSplitter::new(0..100, 8);
        let err = s.feed(b"0123456789", &mut Vec::new()).unwrap_err();
        assert!(err.1.contains("longer than 8 bytes"), "{err:?}");
    }

    #[test]
    fn shard_arguments_are_checked() {
        assert!(Shard::new(2, 2).is_err());
        assert!(Shard::new(0, 0).is_err());
        assert_eq!(Shard::new(3, 4).unwrap().byte_range(10), 7..10);
    }

    #[test]
    fn local_lines_decode_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n\n[1]\n\xff\xfe\n").unwrap();
        let uri = path.display().to_string();
        let lines: Vec<_> = local_lines(&path, Shard::WHOLE, StreamOptions::default())
            .unwrap()
            .collect();
        let first = lines[0].as_ref().unwrap();
        assert_eq!(first.json_object(&uri).unwrap()["a"], 1);
        let array = lines[1].as_ref().unwrap();
        assert_eq!(array.number, Some(3));
        let err = array.json_object(&uri).unwrap_err().to_string();
        assert!(
            err.contains(&uri) && err.contains("line 3") && err.contains("an array"),
            "{err}"
        );
        let err = lines[2].as_ref().unwrap_err().to_string();
        assert!(err.contains("line 4") && err.contains("UTF-8"), "{err}");
        assert_eq!(lines.len(), 3, "reading stops after an error");
    }

    #[test]
    fn blocking_iterator_reads_local_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n").unwrap();
        let lines: Vec<Line> = LineIter::open(
            path.to_str().unwrap(),
            Shard::WHOLE,
            StreamOptions::default(),
        )
        .unwrap()
        .collect::<Result<_>>()
        .unwrap();
        assert_eq!(
            lines.iter().map(|l| l.number).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
        assert!(is_jsonl("s3://b/X.JSONL") && !is_jsonl("train.parquet"));
    }
}
