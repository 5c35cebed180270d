//! The subcommands, one file each: a run (`run`), `config`, `status`, `export`, `merge`,
//! `verify` and `salvage` (`doctor`), and `demo`; with the end-of-run summary and the lines
//! `status` and `merge` share with it (`summary`). Each parses nothing itself: `lib.rs` routes
//! the parsed command line here.

pub mod config;
pub mod demo;
pub mod doctor;
pub mod export;
pub mod merge;
pub mod run;
pub mod status;
pub mod summary;
