//! The bottom layer: what every other layer may use, importing nothing of ours. Text as flota
//! prints it, the panic hook that keeps panics to one line, and the byte budget on held results.

mod budget;
pub mod panics;
mod text;

pub use budget::Budget;
pub use text::{signal_name, thousands};
