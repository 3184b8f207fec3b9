//! The kubeswift side of `scripts/bench-storage`: one timed transfer per call, printed as
//! `seconds bytes` on stdout for the script's table.
//!
//! ```text
//! storage_bench download s3://bucket/model /tmp/cache     # cold materialize of a folder
//! storage_bench upload /path/checkpoint-1 s3://bucket/ck  # checkpoint upload, manifest last
//! ```

use std::time::Instant;

use anyhow::{Context, bail};
use kubeswift_runtime::storage::Remote;
use kubeswift_runtime::storage::cache::Cache;
use kubeswift_runtime::storage::checkpoint::{UploadOptions, upload_checkpoint};
use kubeswift_runtime::storage::location::Location;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Quiet unless RUST_LOG asks: the script reads only the timing line.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let remote = |uri: &str| -> anyhow::Result<Remote> {
        let loc = Location::parse(uri)?;
        let loc = loc.as_remote().context("expected a remote URI")?;
        Ok(Remote::open(loc)?)
    };
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["download", uri, cache_dir] => {
            let start = Instant::now();
            let report = Cache::new(cache_dir)
                .materialize_remote(&remote(uri)?)
                .await?;
            println!(
                "{:.3} {}",
                start.elapsed().as_secs_f64(),
                report.bytes_fetched
            );
        }
        ["upload", dir, uri] => {
            let start = Instant::now();
            let manifest =
                upload_checkpoint(dir.as_ref(), &remote(uri)?, &UploadOptions::default()).await?;
            let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
            println!("{:.3} {}", start.elapsed().as_secs_f64(), bytes);
        }
        _ => bail!("usage: storage_bench download URI CACHE_DIR | upload DIR URI"),
    }
    Ok(())
}
