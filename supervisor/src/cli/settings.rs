//! Where a run's settings come from: flags, then `FLOTA_*` environment variables, then the
//! `--config` TOML file, then the built-in defaults, in that order of precedence.
//!
//! clap already ranks a flag above its environment variable above its default. The file is
//! slotted in below both by making its values the defaults of the command clap parses with:
//! each key is a long flag (`workers = 8`, `max-body = "64M"`, `header = ["A: b"]`), checked
//! against the command's own flags, so an unknown key is an error that names it, and each value
//! goes through the same parser as the flag. `supervisor config` prints every setting and where
//! it came from; SIGHUP parses it all again and applies what can change in flight.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::flags::Cli;

/// A parsed command line, with what it was parsed from.
pub struct Parsed {
    /// The flags, typed.
    pub cli: Cli,
    matches: ArgMatches,
    /// The config file, and the keys it set.
    file: Option<(PathBuf, BTreeMap<String, Vec<String>>)>,
}

/// Why a command line could not be parsed.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own (help and version included).
    Clap(clap::Error),
    /// The config file.
    File(String),
}

/// Parses `argv` (program name first) with the config file's values as defaults.
pub fn parse(argv: &[OsString]) -> Result<Parsed, ParseError> {
    // A worker (or mockapi) gets everything through its pipe or its flags, never a file.
    let internal = argv.get(1).and_then(|a| a.to_str()).is_some_and(|a| a == "worker" || a == "mockapi");
    let path = if internal { None } else { config_path(argv) };
    let file = match &path {
        Some(path) => Some((path.clone(), read(path).map_err(ParseError::File)?)),
        None => None,
    };
    let mut cmd = Cli::command();
    if let Some((path, values)) = &file {
        cmd = with_defaults(cmd, path, values).map_err(ParseError::File)?;
    }
    let matches = cmd.clone().try_get_matches_from(argv).map_err(ParseError::Clap)?;
    refuse_run_flags_with_a_subcommand(&cmd, &matches).map_err(ParseError::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    Ok(Parsed { cli, matches, file })
}

/// A run's flags given with a subcommand (`--url … export`) are a mistake, not ignored. The
/// global flags (`--config`, `-q`, `-v`, `--log-level`) go with any command, before or after it.
fn refuse_run_flags_with_a_subcommand(cmd: &clap::Command, matches: &ArgMatches) -> Result<(), clap::Error> {
    let Some(sub) = matches.subcommand_name() else { return Ok(()) };
    for arg in cmd.get_arguments().filter(|a| !a.is_global_set()) {
        if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            let flag = arg.get_long().unwrap_or_default();
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                format!("the subcommand '{sub}' cannot be used with '--{flag}'\n"),
            ));
        }
    }
    Ok(())
}

/// `--config FILE`, `--config=FILE`, or `FLOTA_CONFIG`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1).map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("FLOTA_CONFIG").map(PathBuf::from)
}

/// The file's settings, each as the strings a flag would have been given.
fn read(path: &Path) -> Result<BTreeMap<String, Vec<String>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("config file {}: {}", path.display(), e.message().replace('\n', " ")))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let strings = match value {
            toml::Value::Array(items) => {
                items.into_iter().map(|v| scalar(&key, v)).collect::<Result<Vec<_>, _>>()
            }
            v => scalar(&key, v).map(|s| vec![s]),
        }
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
        out.insert(key.replace('_', "-"), strings);
    }
    Ok(out)
}

fn scalar(key: &str, v: toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "`{key}` must be a string, a number, a boolean or a list of them, not {}",
            other.type_str()
        )),
    }
}

/// Keys that are not settings of a run.
const NOT_IN_A_FILE: &[&str] = &["config", "help", "version", "quiet", "verbose"];

/// Makes the file's values the defaults of the flags they name, in a run and in `demo`.
fn with_defaults(
    mut cmd: clap::Command,
    path: &Path,
    values: &BTreeMap<String, Vec<String>>,
) -> Result<clap::Command, String> {
    for (key, vals) in values {
        let id = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .map(|a| a.get_id().clone())
            .filter(|_| !NOT_IN_A_FILE.contains(&key.as_str()))
            .ok_or_else(|| format!("config file {}: unknown setting `{key}`", path.display()))?;
        let vals = vals.clone();
        cmd = cmd.mut_arg(id.clone(), |a| a.default_values(vals.clone()));
        for sub in ["demo", "config"] {
            cmd = cmd.mut_subcommand(sub, |sc| {
                if sc.get_arguments().any(|a| a.get_id() == &id) {
                    sc.mut_arg(id.clone(), |a| a.default_values(vals.clone()))
                } else {
                    sc
                }
            });
        }
    }
    Ok(cmd)
}

impl Parsed {
    /// Every setting of a run, with its value and where it came from, secrets redacted: those
    /// given to `config` if that is the command, else the run's.
    pub fn sources(&self) -> Vec<(String, String, String)> {
        let root = Cli::command();
        let (cmd, matches) = match self.matches.subcommand() {
            Some(("config", sub)) => (root.find_subcommand("config").cloned().unwrap_or(root), sub),
            _ => (root, &self.matches),
        };
        let mut out = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() || NOT_IN_A_FILE.contains(&long) {
                continue;
            }
            let id = arg.get_id().as_str();
            let values: Vec<String> = matches
                .get_raw(id)
                .map(|v| v.map(|s| redact(long, &s.to_string_lossy())).collect())
                .unwrap_or_default();
            let from = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag".to_owned(),
                Some(ValueSource::EnvVariable) => {
                    format!("env {}", arg.get_env().map(|e| e.to_string_lossy()).unwrap_or_default())
                }
                Some(ValueSource::DefaultValue) => match &self.file {
                    Some((path, keys)) if keys.contains_key(long) => format!("file {}", path.display()),
                    _ => "default".to_owned(),
                },
                _ => "unset".to_owned(),
            };
            let shown = if values.is_empty() { "-".to_owned() } else { values.join(", ") };
            out.push((long.to_owned(), shown, from));
        }
        // The client's secret has no flag (a flag would show it in the process list).
        if std::env::var_os("FLOTA_OAUTH2_CLIENT_SECRET").is_some() {
            let row = ("oauth2-client-secret".to_owned(), "<redacted>".to_owned());
            out.push((row.0, row.1, "env FLOTA_OAUTH2_CLIENT_SECRET".to_owned()));
        }
        out
    }
}

/// A header's value is a secret (a token, a cookie): only its name is shown. A credential
/// helper's command line may carry one too (`curl -u id:secret`): only its program is shown.
fn redact(flag: &str, value: &str) -> String {
    match (flag, value.split_once(':')) {
        ("header", Some((name, _))) => format!("{name}: <redacted>"),
        ("auth-command", _) => match value.split_whitespace().next() {
            Some(program) if program != value.trim() => format!("{program} <arguments redacted>"),
            _ => value.to_owned(),
        },
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("supervisor").chain(args.iter().copied()).map(OsString::from).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("a temp file");
        std::fs::write(f.path(), text).expect("writes");
        f
    }

    #[test]
    fn a_flag_wins_over_the_file_and_the_file_over_the_default() {
        let f = file("workers = 7\nthreads = 9\nrate = \"600/min\"\nheader = [\"Authorization: Bearer s3cret\"]\nretry_quarantined = true\n");
        let path = f.path().to_str().expect("utf-8");
        let p = parse(&argv(&["--config", path, "--workers", "3"])).unwrap_or_else(|_| panic!("parses"));
        let t = &p.cli.run.tuning;
        assert_eq!((t.workers, t.threads, t.rate, t.retry_quarantined), (3, 9, Some(10.0), true));
        assert_eq!(t.headers, ["Authorization: Bearer s3cret"]);
        let sources = p.sources();
        let find = |k: &str| sources.iter().find(|(key, ..)| key == k).expect(k).clone();
        assert_eq!(find("workers"), ("workers".into(), "3".into(), "flag".into()));
        assert_eq!(find("threads").2, format!("file {path}"));
        assert_eq!(find("header").1, "Authorization: <redacted>");
        assert_eq!(find("chunk-size"), ("chunk-size".into(), "256".into(), "default".into()));
    }

    #[test]
    fn a_bad_file_is_an_error_that_names_it() {
        for (text, want) in [
            ("wrokers = 3\n", "unknown setting `wrokers`"),
            ("workers = \n", "config file"),
            ("workers = { a = 1 }\n", "`workers` must be a string, a number"),
            ("config = \"x\"\n", "unknown setting `config`"),
        ] {
            let f = file(text);
            match parse(&argv(&["--config", f.path().to_str().expect("utf-8")])) {
                Err(ParseError::File(e)) => assert!(e.contains(want), "{text:?}: {e}"),
                _ => panic!("{text:?} was accepted"),
            }
        }
        match parse(&argv(&["--config", "/nonexistent/flota.toml"])) {
            Err(ParseError::File(e)) => {
                assert!(e.contains("cannot read config file /nonexistent/flota.toml"))
            }
            _ => panic!("a missing file was accepted"),
        }
        // A bad value goes through the flag's own parser.
        let f = file("rate = \"fast\"\n");
        match parse(&argv(&["--config", f.path().to_str().expect("utf-8")])) {
            Err(ParseError::Clap(e)) => assert!(e.to_string().contains("not a rate"), "{e}"),
            _ => panic!("a bad rate was accepted"),
        }
    }

    #[test]
    fn the_demo_takes_the_files_tuning_and_a_worker_reads_no_file() {
        let f = file("threads = 12\n");
        let path = f.path().to_str().expect("utf-8");
        let p = match parse(&argv(&["--config", path, "demo"])) {
            Ok(p) => p,
            Err(ParseError::Clap(e)) => panic!("{e}"),
            Err(ParseError::File(e)) => panic!("{e}"),
        };
        match p.cli.command {
            Some(crate::cli::flags::Command::Demo(d)) => assert_eq!(d.tuning.threads, 12),
            other => panic!("{other:?}"),
        }
        assert!(parse(&argv(&["worker", "--config", "/nonexistent"])).is_ok(), "a worker read the file");
        match parse(&argv(&["--url", "http://h/{id}", "export", "--store", "s"])) {
            Err(ParseError::Clap(e)) => {
                assert!(e.to_string().contains("'export' cannot be used with '--url'"), "{e}")
            }
            _ => panic!("a run's flag with a subcommand was accepted"),
        }
    }
}
