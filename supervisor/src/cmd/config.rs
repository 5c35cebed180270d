//! `supervisor config`: every setting of a run, its value and where it came from (a flag, a
//! `FLOTA_*` variable, the `--config` file, or the default); then the same checks a run makes.

use crate::cli::{self, Command, Parsed};
use crate::engine::Error;

/// `supervisor config`: every setting of a run, its value and where it came from; then the
/// same checks a run makes.
pub fn run(parsed: &Parsed) -> Result<i32, Error> {
    let rows = parsed.sources();
    let width = rows.iter().map(|(k, ..)| k.len()).max().unwrap_or(0);
    let vwidth = rows.iter().map(|(_, v, _)| v.len()).max().unwrap_or(0).min(60);
    for (key, value, from) in &rows {
        println!("{key:width$}  {value:vwidth$}  {from}");
    }
    let args = match &parsed.cli.command {
        Some(Command::Config(args)) => args,
        _ => &parsed.cli.run,
    };
    cli::run_config(args).map_err(Error::Usage)?;
    Ok(0)
}
