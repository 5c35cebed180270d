//! The bottom layer: what every other layer may use, importing nothing of ours. Text as flota
//! prints it, and the panic hook that keeps panics to one line.

pub mod panics;
mod text;

pub use text::{signal_name, thousands};
