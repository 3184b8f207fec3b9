//! The operator's integration tests, linked into one test binary (one link instead of one per
//! file keeps a clean CI build within its disk and time):
//! - `controller`: the real kube-runtime Controller against the API server emulator;
//! - `golden`: rendered objects compared with the reviewed files under `golden/`.

mod common;

mod controller;
mod golden;
