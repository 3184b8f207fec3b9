//! kubeswift-args: ms-swift 3.x's command-line arguments as data.
//!
//! The seed's ~340 arguments live in one table (`table/`), grouped as the seed groups them.
//! From it come the `swift` parser and `--help` (`cli`, `help`), validation with suggestions
//! (`validate`, `suggest`), derived defaults (`derive`), `load_args` (`load_args`),
//! args.json in and out (`args_json`), and the JSON schema of a resource's `args`
//! (`schema`). No ML dependencies: the operator validates SwiftTrainJob args with this crate.

mod args;
pub mod args_json;
pub mod cli;
pub mod command;
pub mod config_file;
pub mod derive;
pub mod dist_env;
pub mod error;
pub mod exit;
pub mod group;
pub mod help;
pub mod load_args;
pub mod model_kwargs;
pub mod progress;
pub mod resolve;
pub mod schema;
pub mod spec;
pub mod suggest;
pub mod table;
mod validate;
pub mod value;

pub use args::{Args, Source};
pub use command::Command;
pub use dist_env::DistEnv;
pub use error::{ArgsError, Origin};
pub use resolve::{Given, GivenValue, Resolved, resolve, resolve_map};
