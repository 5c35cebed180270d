//! The command line, in two steps: raw flags as clap parses them ([`flags`]), each value through
//! its parser ([`mod@parse`]); layered settings (flag > `FLOTA_*` > `--config` file > default,
//! [`settings`]); then a run's flags checked against each other and the machine into a
//! [`RunConfig`](crate::job::RunConfig) ([`validate`]). It imports only `job` and `util`.

pub mod flags;
pub mod parse;
pub mod settings;
pub mod validate;

pub use flags::{
    BodyAs, Cli, Command, DemoArgs, ExportArgs, Format, MergeArgs, Only, RunArgs, SalvageArgs, StatusArgs,
    SummaryFormat, UpgradeArgs, VerifyArgs,
};
pub use settings::{parse, ParseError, Parsed};
pub use validate::{pace, run_config};
