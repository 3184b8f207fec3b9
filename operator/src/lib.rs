//! kubeswift-operator: reconciles SwiftTrainJob, SwiftDeployment and SwiftSampleJob.
//!
//! `build` holds the pure builders (resource -> desired children), `render` prints them
//! offline, `controller` holds the thin reconcile loops that apply them and report status,
//! `progress` reads training progress from rank 0, `metrics` and `leader` are the
//! operational parts.

pub mod build;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod progress;
pub mod render;
pub mod server;
