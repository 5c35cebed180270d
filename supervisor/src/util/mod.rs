//! The bottom layer: what every other layer may use, importing nothing of ours. Text as flota
//! prints it, the panic hook that keeps panics to one line, the byte budget on held results, and the
//! allocator's arenas.

pub mod arenas;
mod budget;
pub mod panics;
mod text;

pub use budget::Budget;
pub use text::{signal_name, thousands};
