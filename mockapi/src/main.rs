//! The standalone `mockapi` binary; see the library for what it serves.
use clap::Parser;

fn main() {
    std::process::exit(mockapi::run(mockapi::Cli::parse().args));
}
