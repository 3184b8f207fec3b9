//! kubeswift-runtime: everything the `swift` binary runs. Each folder is one concern
//! (see DESIGN.md): model, tuner, data, train, infer/serve, dist, storage.

pub mod commands;
pub mod data;
pub mod device;
pub mod dist;
pub mod export;
pub mod infer;
pub mod model;
pub mod progress;
pub mod serve;
pub mod storage;
pub mod template;
#[cfg(test)]
mod test_util;
pub mod train;
pub mod tuner;
