//! The progress contract between a training pod and the operator; defined in the light
//! `kubeswift-args` crate so the runtime shares it without linking Kubernetes crates.

pub use kubeswift_args::progress::*;
