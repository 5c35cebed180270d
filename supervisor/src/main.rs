//! The `supervisor` binary: everything lives in the library.

fn main() {
    std::process::exit(supervisor::main());
}
