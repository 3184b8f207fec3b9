//! Shared helpers for the storage tests against the real S3 server that `scripts/test`
//! starts (s3s-fs on 127.0.0.1; see scripts/s3-server.sh).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use kubeswift_runtime::storage::{Location, Remote, RemoteLocation, StoreConfig};
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// The bucket from the environment, or None after a loud skip message.
pub fn bucket() -> Option<String> {
    match (
        std::env::var("AWS_ENDPOINT_URL"),
        std::env::var("KUBESWIFT_TEST_S3_BUCKET"),
    ) {
        (Ok(_), Ok(bucket)) => Some(bucket),
        _ => {
            eprintln!(
                "\n*** SKIPPED: no S3 server. Run ./scripts/test (it starts s3s-fs and sets \
                 AWS_ENDPOINT_URL and KUBESWIFT_TEST_S3_BUCKET); CI always does. ***\n"
            );
            None
        }
    }
}

/// A fresh prefix per test (and per run), so tests share one bucket without clashing.
pub fn unique_uri(bucket: &str, name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://{bucket}/tests/{name}-{}-{nanos}", std::process::id())
}

pub fn remote_loc(uri: &str) -> RemoteLocation {
    Location::parse(uri).unwrap().as_remote().unwrap().clone()
}

pub fn open(uri: &str) -> Remote {
    Remote::open_with(&remote_loc(uri), &StoreConfig::from_env()).unwrap()
}

pub async fn put(remote: &Remote, rel: &str, bytes: Vec<u8>) {
    let target = remote.join(rel);
    target
        .store
        .put(&target.location.object_path(), PutPayload::from(bytes))
        .await
        .unwrap();
}

/// Deterministic pseudo-random bytes (xorshift), so content differs per seed.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `files` (relative path, content) under `dir`.
pub fn write_tree(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (rel, content) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// Runs one `#[ignore]`d helper test of this test binary in a child process (for
/// measurements that need a process of their own, and for multi-process locking).
/// `test_name` is the full name in the one integration binary: `module::test`.
pub fn spawn_helper(test_name: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        test_name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// The value of `KEY=value` printed by a helper child.
pub fn reported(output: &str, key: &str) -> u64 {
    // The test harness prints "test name ... " on the same line as the first output.
    output
        .split_whitespace()
        .find_map(|token| token.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("child did not report {key}:\n{output}"))
        .trim()
        .parse()
        .unwrap()
}

/// Peak resident set size of this process so far (VmHWM), bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Wraps a store and fails chosen requests, to interrupt transfers deterministically.
#[derive(Debug)]
pub struct FaultyStore {
    pub inner: Arc<dyn ObjectStore>,
    /// Ranged GETs allowed before every further GET fails.
    pub gets_allowed: usize,
    pub gets: AtomicUsize,
    /// PUTs of objects whose key ends with this fail.
    pub fail_put_suffix: Option<String>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultyStore {
        FaultyStore {
            inner,
            gets_allowed: usize::MAX,
            gets: AtomicUsize::new(0),
            fail_put_suffix: None,
        }
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn injected(path: &ObjPath) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected failure for {path}").into(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if let Some(suffix) = &self.fail_put_suffix
            && location.as_ref().ends_with(suffix.as_str())
        {
            return Err(injected(location));
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.range.is_some() && self.gets.fetch_add(1, Ordering::SeqCst) >= self.gets_allowed
        {
            return Err(injected(location));
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A private s3s-fs instance the test may kill and restart (its data survives restarts).
pub struct PrivateServer {
    pub bin: PathBuf,
    pub data: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
}

impl PrivateServer {
    /// Starts one, or None (with a loud skip) if the binary is not provided.
    pub fn start(bucket: &str) -> Option<PrivateServer> {
        let Ok(bin) = std::env::var("KUBESWIFT_TEST_S3S_FS_BIN") else {
            eprintln!("\n*** SKIPPED: KUBESWIFT_TEST_S3S_FS_BIN unset; run ./scripts/test. ***\n");
            return None;
        };
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(data.path().join(bucket)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = PrivateServer {
            bin: bin.into(),
            data,
            port,
            child: None,
        };
        server.restart();
        Some(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Settings pointing at this server, with short retries so a dead server fails fast.
    pub fn config(&self) -> StoreConfig {
        StoreConfig::from_env()
            .with_var("AWS_ENDPOINT_URL", &self.endpoint())
            .with_var("KUBESWIFT_STORAGE_MAX_RETRIES", "2")
            .with_var("KUBESWIFT_STORAGE_RETRY_TIMEOUT_SECS", "3")
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &std::env::var("AWS_ACCESS_KEY_ID").unwrap()])
            .args([
                "--secret-key",
                &std::env::var("AWS_SECRET_ACCESS_KEY").unwrap(),
            ])
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}
