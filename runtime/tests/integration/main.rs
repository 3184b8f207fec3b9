//! All of the runtime's integration tests, one module per area, linked into one test binary:
//! one link instead of one per file keeps a clean CI build within its disk and time.
//! Run one area with `cargo test -p kubeswift-runtime --test integration <module>::`.

mod adapters;
mod ports;
mod serve_support;
mod storage_support;
mod tensors;

mod cli;
mod data_pipeline;
mod dist_collective;
mod dist_train;
mod engine;
mod export_merge;
mod infer_cli;
mod infer_storage;
mod learning;
mod lora_tuner;
mod model_errors;
mod model_parity;
mod serve_api;
mod serve_bad_requests;
mod serve_concurrency;
mod serve_multi_lora;
mod serve_process;
mod smollm2;
mod storage_s3;
mod template_api;
mod template_fixtures;
mod train_cli;
mod train_storage;
mod train_streaming;
mod training_parity;
