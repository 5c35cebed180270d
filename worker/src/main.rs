//! The standalone `worker` binary. The supervisor normally re-executes itself in worker mode
//! instead (so a worker is always the same build as its supervisor); this binary is for
//! `--worker-bin`.

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    std::process::exit(worker::run());
}
