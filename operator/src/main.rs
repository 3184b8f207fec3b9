//! `swift-operator`: with no subcommand, runs the controllers against the cluster found the
//! standard way (in-cluster config or KUBECONFIG); `crds` prints the CRDs; `render -f FILE`
//! prints a file's children offline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::FutureExt;
use kubeswift_operator::build::{DEFAULT_IMAGE, Defaults};
use kubeswift_operator::controller::{self, Scope};
use kubeswift_operator::leader::{self, Election};
use kubeswift_operator::metrics::Metrics;
use kubeswift_operator::progress::{HttpProgress, default_url_template};
use kubeswift_operator::{render, server};
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "swift-operator", version, about = "The kubeswift operator")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The `swift` image of resources that name none.
    #[arg(long, env = "KUBESWIFT_DEFAULT_IMAGE", default_value = DEFAULT_IMAGE, global = true)]
    default_image: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "KUBESWIFT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Namespaces to watch, comma separated (default: all).
    #[arg(long, env = "KUBESWIFT_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Compete for a Lease so that only one replica reconciles.
    #[arg(long, env = "KUBESWIFT_LEADER_ELECTION")]
    leader_election: bool,
    /// The namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kubeswift-system")]
    lease_namespace: String,
    #[arg(long, default_value = "kubeswift-operator")]
    lease_name: String,
    /// Rank 0's progress URL; `{namespace}` and `{job}` are replaced.
    #[arg(long, env = "KUBESWIFT_PROGRESS_URL_TEMPLATE", default_value_t = default_url_template())]
    progress_url_template: String,
    /// Seconds between progress polls of a running job.
    #[arg(long, default_value_t = 30)]
    progress_interval_seconds: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Print the children of the resources in a YAML file, without a cluster.
    Render {
        /// The file (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let defaults = Defaults {
        image: cli.default_image.clone(),
    };
    match &cli.command {
        Some(Cmd::Crds) => {
            print!("{}", kubeswift_crds::crds_yaml()?);
            Ok(())
        }
        Some(Cmd::Render { file }) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let out =
                render::render(&text, &defaults).with_context(|| file.display().to_string())?;
            print!("{out}");
            Ok(())
        }
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .init();
            tokio::runtime::Runtime::new()?.block_on(run(cli, defaults))
        }
    }
}

/// The progress-token key: from the chart's Secret, else random for this process.
fn progress_key() -> anyhow::Result<Vec<u8>> {
    if let Ok(k) = std::env::var("KUBESWIFT_PROGRESS_KEY")
        && !k.is_empty()
    {
        return Ok(k.into_bytes());
    }
    let mut key = vec![0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
    Ok(key)
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(cli: Cli, defaults: Defaults) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes cluster found (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        .boxed()
        .shared()
    };
    let stop = stop_tx.clone();
    tokio::spawn(async move {
        signal().await;
        info!("shutting down: finishing the reconciles in flight");
        let _ = stop.send(true);
    });
    let server = tokio::spawn(server::serve(
        cli.metrics_addr,
        metrics.clone(),
        shutdown.clone(),
    ));

    if cli.leader_election {
        let election = Election {
            namespace: cli.lease_namespace.clone(),
            lease: cli.lease_name.clone(),
            identity: std::env::var("POD_NAME")
                .unwrap_or_else(|_| format!("swift-operator-{}", std::process::id())),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        };
        tokio::select! {
            _ = leader::acquire(client.clone(), &election) => {},
            _ = shutdown.clone() => return Ok(()),
        }
        let stop = stop_tx.clone();
        let keeper = client.clone();
        tokio::spawn(async move {
            leader::keep(keeper, election).await;
            error!("leadership lost: stopping");
            let _ = stop.send(true);
        });
    }

    let progress = Arc::new(HttpProgress::new(cli.progress_url_template.clone()));
    let ctx = controller::context(
        client,
        defaults,
        metrics,
        progress,
        progress_key()?,
        Duration::from_secs(cli.progress_interval_seconds.max(1)),
    );
    let scope = if cli.watch_namespaces.is_empty() {
        Scope::All
    } else {
        Scope::Namespaces(cli.watch_namespaces.clone())
    };
    controller::run(ctx, scope, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    info!("stopped");
    Ok(())
}
