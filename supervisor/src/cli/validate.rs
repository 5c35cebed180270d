//! A run's flags, checked against each other and the machine, become a [`RunConfig`]. Everything
//! an invocation can get wrong is caught here, before anything is created or started.

use std::time::Duration;

use shared::{JobSpec, HEARTBEAT_EVERY};

use super::flags::{AuthArgs, ClientAuthFlag, RunArgs, Tuning};
use crate::job::{
    read_keys, shard_from_env, spool_stdin, ClientAuth, CredentialSource, Ids, KeyFormat, KeySource, Keyed,
    Keys, Listed, Model, OAuth2Client, PaceSettings, RunConfig, Scope, Shard, WorkerLimits, MAX_BODY_LIMIT,
};

/// Retries a minute the fleet may always make, whatever its retry budget, shared among the
/// workers: Finagle's `RetryBudget` allows 10 a second.
const RETRY_FLOOR_PER_MIN: u32 = 600;

/// Checks a run's flags.
pub fn run_config(args: &RunArgs) -> Result<RunConfig, String> {
    let (store, t) = (args.store.clone(), &args.tuning);
    let url =
        args.url.as_deref().ok_or("--url is required (e.g. --url 'http://127.0.0.1:8080/items/{id}')")?;
    let template = worker::fetch::check_url_template(url).map_err(|e| format!("--url: {e}"))?;
    let request = request(args)?;
    let (shard, shard_from) = shard(args.shard, args.shards, |k| std::env::var(k).ok())?;
    let workers = within("--workers", t.workers, 1, 1024)?;
    let threads = within("--threads", t.threads, 1, 4096)?;
    let chunk_size = within("--chunk-size", t.chunk_size, 1, 1 << 20)?;
    let max_attempts = within("--max-attempts", t.max_attempts, 1, 1000)?;
    if !(1..=MAX_BODY_LIMIT).contains(&t.max_body) {
        return Err(format!("--max-body must be between 1 byte and 128M, not {}", t.max_body));
    }
    check_timeouts(t)?;
    check_worker_memory(t, threads)?;
    let headers = headers(t)?;
    check_items(args, &template, &request, &headers)?;
    let credentials = credentials(&args.auth, |k| std::env::var(k).ok())?;
    let refetch = refetch(args.refresh.as_deref(), args.refetch_status.as_deref(), unix_now())?;
    if !refetch.is_empty() && t.model == Model::Async {
        return Err("--model async fetches what is missing only: use --model fleet for --refresh and --refetch-status".into());
    }
    if let Some(source) = &credentials {
        if let Some((name, _)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("authorization")) {
            return Err(format!(
                "--header {name} and {} both give the Authorization header: give one",
                source.describe()
            ));
        }
        if t.model == Model::Async {
            return Err(
                "--model async sends the job's headers only: use --model fleet for credentials that renew"
                    .into(),
            );
        }
    }
    // Coroutines are not bounded by threads: --concurrency may go past workers x threads, its
    // default with either model.
    let ceiling = if t.model == Model::Async { (workers * threads).max(1 << 16) } else { workers * threads };
    let mut pace = pace(t, ceiling)?;
    pace.api = api_of(url);
    let user = t.user.as_deref().map(resolve_user).transpose()?;
    check_paths(&store, t)?;
    let tls = tls(t)?;
    let user_agent = user_agent(&t.user_agent)?;
    check_model(t, url)?;
    if t.model == Model::Async && (request.method != "GET" || request.body.is_some()) {
        return Err(
            "--model async sends GET without a body: use --model fleet for --method and --body".into()
        );
    }
    if t.model == Model::Async && args.keys.is_some() {
        return Err(
            "--model async fetches ids only (its keys would need the fleet's key table): use --model fleet"
                .into(),
        );
    }
    // Last, as a list on stdin can be read only once.
    let (ids, listed, keys) = match (&args.ids, &args.ids_file, &args.keys) {
        (Some(range), ..) => (Ids::Range(range.parse().map_err(|e| format!("--ids: {e}"))?), None, None),
        (None, Some(file), _) => {
            let (ids, source) = read_ids_file(file)?;
            (Ids::Listed(Listed::of(&ids, source)), Some(ids), None)
        }
        (None, None, Some(file)) => {
            let keys = read_keys_file(file, key_format(args))?;
            // The store counts and digests the distinct keys when it takes them.
            let keyed = Keyed { count: keys.lines, digest: 0, held: 0, source: keys.source.label.clone() };
            (Ids::Keys(keyed), None, Some(keys))
        }
        (None, None, None) => return Err("--ids or --ids-file is required (e.g. --ids 0..1000000)".into()),
    };
    // Each worker holds two chunks, and enough ids to keep every thread busy.
    let max_in_flight = (2 * chunk_size).max(chunk_size + 2 * threads);
    let credential_source = credentials.is_some();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok(RunConfig {
        scope: Scope { ids, shard },
        shard_from,
        listed: std::sync::Mutex::new(listed),
        keys,
        store,
        workers,
        chunk_size,
        worker_timeout: t.worker_timeout,
        worker_bin: t.worker_bin.clone(),
        limits: WorkerLimits { memory: t.worker_memory, open_files: open_files(threads)?, user },
        grace: t.grace,
        retry_quarantined: t.retry_quarantined,
        kill_every: t.chaos.as_ref().and_then(|c| c.kill_every),
        credentials,
        refetch,
        pace,
        model: t.model,
        panic_on: t.chaos.as_ref().map(|c| c.panic_on.clone()).unwrap_or_default(),
        job: JobSpec {
            credential_source,
            url_template: url.to_owned(),
            threads,
            max_in_flight,
            max_attempts,
            max_body: t.max_body,
            connect_timeout_ms: ms(t.connect_timeout),
            io_timeout_ms: ms(t.io_timeout),
            dns_ttl_ms: ms(t.dns_ttl),
            backoff_base_ms: ms(t.backoff_base),
            backoff_max_ms: ms(t.backoff_max),
            retry_after_max_ms: ms(t.retry_after_max),
            retry_budget_pct: t.retry_budget.0,
            retry_floor_per_min: (RETRY_FLOOR_PER_MIN / workers).max(6),
            headers,
            method: request.method,
            body: request.body,
            content_type: request.content_type,
            user_agent,
            tls,
            chaos: t.chaos.as_ref().map(|c| c.worker.clone()).unwrap_or_default(),
        },
    })
}

/// The run's credential source, if it has one: `--auth-command`, or the `--oauth2-*` flags
/// (the client's secret from its file, or `FLOTA_OAUTH2_CLIENT_SECRET` as `env` reads it).
fn credentials(
    a: &AuthArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<CredentialSource>, String> {
    let oauth2 = a.oauth2_token_url.is_some()
        || a.oauth2_client_id.is_some()
        || a.oauth2_client_secret_file.is_some()
        || a.oauth2_scope.is_some()
        || a.oauth2_client_auth.is_some()
        || a.oauth2_refresh_token_file.is_some();
    if let Some(cmd) = &a.auth_command {
        if oauth2 {
            return Err("--auth-command and --oauth2-* are two credential sources: give one".into());
        }
        if cmd.trim().is_empty() {
            return Err("--auth-command is empty: give the helper to run".into());
        }
        return Ok(Some(CredentialSource::Command(cmd.clone())));
    }
    if !oauth2 {
        return Ok(None);
    }
    let token_url =
        a.oauth2_token_url.as_deref().ok_or("--oauth2-* needs --oauth2-token-url (the token endpoint)")?;
    let uri: ureq::http::Uri =
        token_url.parse().map_err(|_| format!("--oauth2-token-url `{token_url}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(format!("--oauth2-token-url `{token_url}` is not an http:// or https:// URL"));
    }
    let client_id = a.oauth2_client_id.clone().ok_or("--oauth2-token-url needs --oauth2-client-id")?;
    if client_id.is_empty() || client_id.chars().any(char::is_control) {
        return Err("--oauth2-client-id must be a non-empty name without control characters".into());
    }
    let secret = match (&a.oauth2_client_secret_file, env("FLOTA_OAUTH2_CLIENT_SECRET")) {
        (Some(_), Some(_)) => {
            return Err(
                "--oauth2-client-secret-file and FLOTA_OAUTH2_CLIENT_SECRET both give the secret: give one"
                    .into(),
            )
        }
        (Some(file), None) => Some(secret_file(file)?),
        (None, Some(secret)) if secret.is_empty() => return Err("FLOTA_OAUTH2_CLIENT_SECRET is empty".into()),
        (None, secret) => secret,
    };
    if let Some(file) = &a.oauth2_refresh_token_file {
        refresh_token_file(file)
            .map_err(|e| format!("--oauth2-refresh-token-file {}: {e}", file.display()))?;
    } else if secret.is_none() {
        return Err(
            "the client-credentials grant needs the client's secret: --oauth2-client-secret-file FILE or \
                    FLOTA_OAUTH2_CLIENT_SECRET"
                .into(),
        );
    }
    if a.oauth2_client_auth.is_some() && secret.is_none() {
        return Err("--oauth2-client-auth says how the secret is sent, and there is none".into());
    }
    if a.oauth2_scope.as_deref().is_some_and(|s| s.trim().is_empty() || s.chars().any(char::is_control)) {
        return Err("--oauth2-scope must be scope names separated by spaces".into());
    }
    Ok(Some(CredentialSource::OAuth2(OAuth2Client {
        token_url: token_url.to_owned(),
        client_id,
        secret: secret.map(shared::Secret),
        scope: a.oauth2_scope.clone(),
        client_auth: match a.oauth2_client_auth {
            Some(ClientAuthFlag::Body) => ClientAuth::Body,
            Some(ClientAuthFlag::Basic) | None => ClientAuth::Basic,
        },
        refresh_token_file: a.oauth2_refresh_token_file.clone(),
    })))
}

/// A refresh token's file: a token on its first line, in a directory flota may write (a
/// rotated token replaces the file by a rename).
fn refresh_token_file(file: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    if text.lines().next().unwrap_or_default().trim().is_empty() {
        return Err("holds no refresh token (its first line is empty)".into());
    }
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).map_err(|e| {
        format!("its directory is not writable ({e}), and a rotated token is written back there")
    })
}

/// What `--refresh` and `--refetch-status` ask to fetch again, at `now` (Unix seconds).
fn refetch(refresh: Option<&str>, statuses: Option<&str>, now: u32) -> Result<crate::job::Refetch, String> {
    let mut r = crate::job::Refetch::default();
    match refresh.map(str::trim) {
        None => {}
        Some("stale") => r.stale_at = Some(now),
        Some(age) => {
            let age = super::parse::parse_duration(age).map_err(|e| format!("--refresh: {e}, or `stale`"))?;
            let secs = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
            r.fetched_before = Some(if secs == 0 { u32::MAX } else { now.saturating_sub(secs) });
        }
    }
    if let Some(list) = statuses {
        for item in list.split(',').map(str::trim) {
            let bad = || format!("--refetch-status: `{item}` is not a status (404) or a class (4xx)");
            let range = match item.strip_suffix("xx") {
                Some(class) => {
                    let c: u16 = class.parse().map_err(|_| bad())?;
                    (c * 100, c * 100 + 99)
                }
                None => {
                    let s: u16 = item.parse().map_err(|_| bad())?;
                    (s, s)
                }
            };
            if !(100..=599).contains(&range.0) || !(100..=599).contains(&range.1) {
                return Err(bad());
            }
            r.statuses.push(range);
        }
    }
    Ok(r)
}

/// The wall clock in Unix seconds.
fn unix_now() -> u32 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// The client's secret: the first line of `file`, not empty.
fn secret_file(file: &std::path::Path) -> Result<String, String> {
    let in_file = |e: String| format!("--oauth2-client-secret-file {}: {e}", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| in_file(e.to_string()))?;
    let secret = text.lines().next().unwrap_or_default().trim_end();
    if secret.is_empty() {
        return Err(in_file("holds no secret (its first line is empty)".into()));
    }
    Ok(secret.to_owned())
}

/// What `--model async` does not do: it is a single event loop for comparing models, not a
/// second way to run production jobs.
fn check_model(t: &Tuning, url: &str) -> Result<(), String> {
    let chaos = t.chaos.clone().unwrap_or_default();
    if t.model == Model::Fleet {
        if !chaos.panic_on.is_empty() {
            return Err("--chaos panic-on needs --model async (a worker's fault is crash-on)".into());
        }
        return Ok(());
    }
    if !url.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")) {
        return Err("--model async fetches http:// URLs only".into());
    }
    if t.rate.is_some() {
        return Err("--model async has no --rate (it keeps --concurrency requests in flight)".into());
    }
    let worker_only = !chaos.worker.hang_on.is_empty() || !chaos.worker.bad_frame_on.is_empty();
    if worker_only || chaos.kill_every.is_some() {
        return Err("--model async has no workers: its faults are crash-on and panic-on".into());
    }
    Ok(())
}

/// The run's shard: `--shard` if given, else the scheduler's (see [`shard_from_env`]), with the
/// variable it came from.
fn shard(
    given: Option<Shard>,
    shards: Option<u64>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Option<Shard>, Option<&'static str>), String> {
    if let Some(s) = given {
        if let Some(n) = shards.filter(|&n| n != s.count) {
            return Err(format!("--shards {n} disagrees with --shard {s}"));
        }
        return Ok((Some(s), None));
    }
    match shard_from_env(env, shards)? {
        Some((s, from)) => Ok((Some(s), Some(from))),
        None if shards.is_some() => Err(
            "--shards needs the shard's index: JOB_COMPLETION_INDEX (set in a Kubernetes Indexed Job), or give \
             --shard I/N"
                .into(),
        ),
        None => Ok((None, None)),
    }
}

/// A run's request beyond its URL: method, body, content type, checked.
struct Request {
    method: String,
    body: Option<String>,
    content_type: Option<String>,
}

/// The largest body template (`--body-file`).
const MAX_BODY_TEMPLATE: u64 = 1 << 20;

/// `--method`, `--body` or `--body-file`, `--content-type`.
fn request(args: &RunArgs) -> Result<Request, String> {
    let method = args.method.to_ascii_uppercase();
    // RFC 9110's token.
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if method.is_empty() || !method.chars().all(token) {
        return Err(format!("--method `{}` is not an HTTP method (GET, POST, PUT, ...)", args.method));
    }
    let body = match (&args.body, &args.body_file) {
        (Some(_), Some(_)) => {
            return Err("--body and --body-file are two ways to give the body: give one".into())
        }
        (Some(b), None) => Some(b.clone()),
        (None, Some(file)) => {
            let in_file = |e: String| format!("--body-file {}: {e}", file.display());
            let len = std::fs::metadata(file).map_err(|e| in_file(e.to_string()))?.len();
            if len > MAX_BODY_TEMPLATE {
                return Err(in_file(format!("{len} bytes; a body template is at most 1 MiB")));
            }
            Some(std::fs::read_to_string(file).map_err(|e| in_file(e.to_string()))?)
        }
        (None, None) => None,
    };
    let content_type = match (&body, &args.content_type) {
        (None, Some(_)) => {
            return Err("--content-type says what the body is: give --body or --body-file".into())
        }
        (None, None) => None,
        (Some(_), Some(ct)) if ct.contains(['\r', '\n']) || ct.trim().is_empty() => {
            return Err(format!("--content-type {ct:?} is not a media type"))
        }
        (Some(_), Some(ct)) => Some(ct.trim().to_owned()),
        (Some(_), None) => Some("application/json".to_owned()),
    };
    if let Some(b) = &body {
        let encoding = shared::template::body_encoding(content_type.as_deref().unwrap_or_default());
        shared::Template::parse_as(b, encoding).map_err(|e| format!("--body: {e}"))?;
    }
    Ok(Request { method, body, content_type })
}

/// How the items are named: `{id}` with `--ids`/`--ids-file`, `{key}` with `--keys`, never both;
/// in the URL, the body or a header, at least once.
fn check_items(
    args: &RunArgs,
    url: &shared::UrlTemplate,
    request: &Request,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut templates = vec![url.clone()];
    if let Some(b) = &request.body {
        templates
            .push(shared::Template::parse_as(b, shared::Encoding::Raw).map_err(|e| format!("--body: {e}"))?);
    }
    for (name, value) in headers {
        let t = shared::Template::parse_as(value, shared::Encoding::Raw)
            .map_err(|e| format!("--header {name}: {e}"))?;
        templates.push(t);
    }
    let has_id = templates.iter().any(shared::Template::has_id);
    let has_key = templates.iter().any(shared::Template::has_key);
    if has_id && has_key {
        return Err("the request has both {id} and {key}: a job's items are ids or keys, not both".into());
    }
    if !has_id && !has_key {
        let where_ = if request.body.is_some() { "--url or --body" } else { "--url" };
        return Err(format!("{where_} has no {{id}} or {{key}} in it: every item would be the same request"));
    }
    let ids_given = args.ids.is_some() || args.ids_file.is_some();
    if ids_given && args.keys.is_some() {
        let ids = if args.ids.is_some() { "--ids" } else { "--ids-file" };
        return Err(format!("{ids} and --keys are two ways to name the items: give one"));
    }
    if args.keys_column.is_some() && args.keys_field.is_some() {
        return Err(
            "--keys-column (a CSV) and --keys-field (JSON Lines) are two layouts of --keys: give one".into(),
        );
    }
    if args.keys.is_none() {
        if args.keys_column.is_some() || args.keys_field.is_some() {
            let flag = if args.keys_column.is_some() { "--keys-column" } else { "--keys-field" };
            return Err(format!("{flag} says where the keys are in --keys FILE: give --keys"));
        }
        if has_key {
            return Err("--url has {key}: give the keys with --keys FILE (or write {id} for --ids)".into());
        }
    } else if has_id {
        return Err("--keys names the items by key: write {key} in --url where the key goes, not {id}".into());
    }
    Ok(())
}

/// The layout `--keys-column` or `--keys-field` gives the keys file.
fn key_format(args: &RunArgs) -> KeyFormat {
    match (&args.keys_column, &args.keys_field) {
        (Some(c), _) => KeyFormat::CsvColumn(c.clone()),
        (None, Some(f)) => KeyFormat::JsonField(f.clone()),
        (None, None) => KeyFormat::Lines,
    }
}

/// Checks a `--keys` file (`-`: stdin, first copied to a temporary file) line by line, holding
/// none of it: a bad line is named by its number before anything is created.
fn read_keys_file(file: &std::path::Path, format: KeyFormat) -> Result<Keys, String> {
    let stdin = file.as_os_str() == "-";
    let label = if stdin { "stdin".to_owned() } else { file.display().to_string() };
    let in_file = |e: String| format!("--keys {label}: {e}");
    let (path, spool) = if stdin {
        let spool = spool_stdin().map_err(|e| in_file(format!("cannot copy it: {e}")))?;
        (spool.to_path_buf(), Some(spool))
    } else {
        (file.to_owned(), None)
    };
    let source = KeySource { path, format, label: label.clone() };
    let mut lines = 0u64;
    for key in read_keys(&source).map_err(|e| in_file(e.to_string()))? {
        key.map_err(|e| in_file(e.to_string()))?;
        lines += 1;
    }
    if lines == 0 {
        return Err(in_file("holds no key".into()));
    }
    Ok(Keys { source, lines, _spool: spool })
}

/// Reads an `--ids-file` (`-`: stdin): one id per line, blank lines and `#` comments skipped.
/// Returns the ids sorted and distinct, and what to call their source.
fn read_ids_file(file: &std::path::Path) -> Result<(Vec<u64>, String), String> {
    use std::io::BufRead;
    let stdin = file.as_os_str() == "-";
    let source = if stdin { "stdin".to_owned() } else { file.display().to_string() };
    let in_file = |e: String| format!("--ids-file {source}: {e}");
    let reader: Box<dyn BufRead> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(file).map_err(|e| in_file(e.to_string()))?))
    };
    let mut ids = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| in_file(format!("line {}: {e}", n + 1)))?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let id = text.parse::<u64>().map_err(|_| {
            let shown: String = text.chars().take(40).collect();
            in_file(format!("line {}: `{shown}` is not an id (a whole number from 0 to {})", n + 1, u64::MAX))
        })?;
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(in_file("holds no id".into()));
    }
    ids.sort_unstable();
    let listed = ids.len();
    ids.dedup();
    if ids.len() < listed {
        log::info!("--ids-file {source}: {} ids listed more than once are fetched once", listed - ids.len());
    }
    Ok((ids, source))
}

/// `--ca-cert` and `--insecure`.
fn tls(t: &Tuning) -> Result<shared::TlsTrust, String> {
    let mut extra_roots = Vec::new();
    for file in &t.ca_certs {
        let in_file = |e: String| format!("--ca-cert {}: {e}", file.display());
        let pem = std::fs::read(file).map_err(|e| in_file(e.to_string()))?;
        extra_roots.extend(worker::fetch::ca_certificates(&pem).map_err(in_file)?);
    }
    Ok(shared::TlsTrust { extra_roots, insecure: t.insecure })
}

/// `--user-agent`: a header value (visible ASCII and spaces), not empty.
fn user_agent(ua: &str) -> Result<String, String> {
    let ua = ua.trim();
    if ua.is_empty() || !ua.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(format!("--user-agent must be printable ASCII and not empty, not {ua:?}"));
    }
    Ok(ua.to_owned())
}

/// `--rate`, `--burst` and `--concurrency`, checked against the fleet's size.
pub fn pace(t: &Tuning, ceiling: u32) -> Result<PaceSettings, String> {
    if t.burst.is_some() && t.rate.is_none() {
        return Err("--burst needs --rate".into());
    }
    if t.burst == Some(0) {
        return Err("--burst must be at least 1".into());
    }
    if let Some(c) = t.concurrency {
        if c == 0 || c > ceiling {
            let bound = if t.model == Model::Async { "" } else { "--workers times --threads, " };
            return Err(format!("--concurrency must be between 1 and {bound}{ceiling}, not {c}"));
        }
    }
    if t.wait_for_api < Duration::from_secs(1) {
        return Err(format!(
            "--wait-for-api must be at least 1s, not {}",
            humantime::format_duration(t.wait_for_api)
        ));
    }
    Ok(PaceSettings {
        rate: t.rate,
        burst: t.burst,
        concurrency: t.concurrency,
        ceiling,
        outage_max: t.outage_max,
        wait_for_api: t.wait_for_api,
        api: String::new(),
    })
}

/// The `host:port` a URL template names (`{id}` and the like left as they are), for what is
/// said about the API.
fn api_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    if has_port {
        return authority.to_owned();
    }
    let port = if url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) { 443 } else { 80 };
    format!("{authority}:{port}")
}

fn within(name: &str, v: u32, lo: u32, hi: u32) -> Result<u32, String> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{name} must be between {lo} and {hi}, not {v}"))
    }
}

fn check_timeouts(t: &Tuning) -> Result<(), String> {
    for (name, d) in [
        ("--connect-timeout", t.connect_timeout),
        ("--io-timeout", t.io_timeout),
        ("--worker-timeout", t.worker_timeout),
    ] {
        if d < Duration::from_millis(1) {
            return Err(format!("{name} must be at least 1ms"));
        }
    }
    let min_timeout = 4 * HEARTBEAT_EVERY;
    if t.worker_timeout < min_timeout {
        return Err(format!(
            "--worker-timeout must be at least {}ms (workers send a heartbeat every {}ms)",
            min_timeout.as_millis(),
            HEARTBEAT_EVERY.as_millis()
        ));
    }
    Ok(())
}

/// `--worker-memory` must hold, per fetch thread, its stack and its connection's buffers
/// (ureq keeps 128 KiB each way), plus room for the binary, the allocator and a few bodies.
fn check_worker_memory(t: &Tuning, threads: u32) -> Result<(), String> {
    let per_thread = worker::pool::FETCH_STACK as u64 + (512 << 10);
    let needed = u64::from(threads) * per_thread + (128 << 20) + 4 * t.max_body;
    if t.worker_memory < needed {
        return Err(format!(
            "--worker-memory {} is too small for {threads} threads and --max-body {}: give it at least {}M",
            t.worker_memory,
            t.max_body,
            needed.div_ceil(1 << 20)
        ));
    }
    Ok(())
}

/// `--header`s, then those of `--header-file` (blank lines and `#` comments skipped).
fn headers(t: &Tuning) -> Result<Vec<(String, String)>, String> {
    let mut headers = t.headers.iter().map(|h| parse_header(h)).collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = &t.header_file {
        let in_file = |e| format!("--header-file {}: {e}", file.display());
        let text = std::fs::read_to_string(file).map_err(|e| in_file(e.to_string()))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            headers.push(parse_header(line).map_err(in_file)?);
        }
    }
    Ok(headers)
}

fn check_paths(store: &std::path::Path, t: &Tuning) -> Result<(), String> {
    if let Some(bin) = &t.worker_bin {
        if !bin.is_file() {
            return Err(format!("--worker-bin {} is not a file", bin.display()));
        }
    }
    match store.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if !parent.is_dir() => {
            Err(format!("--store {}: directory {} does not exist", store.display(), parent.display()))
        }
        _ => Ok(()),
    }
}

/// A worker's open-files limit: per thread a pooled connection and one being replaced, plus
/// pipes, stdio and slack; never above what this process may grant (its hard limit).
fn open_files(threads: u32) -> Result<u64, String> {
    use nix::sys::resource::{getrlimit, Resource};
    let want = 2 * u64::from(threads) + 64;
    let (_, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("cannot read the open-files limit: {e}"))?;
    if hard < u64::from(threads) + 16 {
        return Err(format!(
            "--threads {threads} needs {} open files per worker; the hard limit is {hard}",
            u64::from(threads) + 16
        ));
    }
    Ok(want.min(hard))
}

/// Looks up `--user`: it must exist, and switching to it needs root (unless it is us).
fn resolve_user(name: &str) -> Result<(u32, u32), String> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| format!("--user {name}: {e}"))?
        .ok_or_else(|| format!("--user {name}: no such user"))?;
    let me = nix::unistd::geteuid();
    if !me.is_root() && me != user.uid {
        return Err(format!("--user {name}: switching users needs the supervisor to run as root"));
    }
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

fn parse_header(h: &str) -> Result<(String, String), String> {
    let (name, value) =
        h.split_once(':').ok_or_else(|| "--header must look like 'Name: value'".to_owned())?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        return Err(format!("--header: `{name}` is not a valid header name"));
    }
    let value = value.trim();
    if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(format!("--header {name}: the value has control characters"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::IdRange;

    fn tuning() -> Tuning {
        Tuning {
            workers: 4,
            threads: 8,
            chunk_size: 100,
            max_attempts: 3,
            max_body: 1024,
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            dns_ttl: Duration::from_secs(30),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(60),
            retry_budget: super::super::parse::RetryBudgetPct(Some(20)),
            outage_max: Duration::from_secs(300),
            wait_for_api: Duration::from_secs(180),
            worker_timeout: Duration::from_secs(10),
            headers: vec!["Authorization: Bearer x".into()],
            header_file: None,
            worker_bin: None,
            worker_memory: 1 << 30,
            user: None,
            grace: Duration::from_secs(1),
            retry_quarantined: false,
            rate: None,
            burst: None,
            concurrency: None,
            user_agent: super::super::flags::DEFAULT_USER_AGENT.to_owned(),
            ca_certs: Vec::new(),
            insecure: false,
            model: Model::Fleet,
            chaos: None,
        }
    }

    fn args(url: Option<&str>, ids: Option<&str>, tuning: Tuning) -> RunArgs {
        RunArgs::of_ids(url.map(str::to_owned), ids.map(str::to_owned), "s.sled".into(), tuning)
    }

    #[test]
    fn a_good_run_validates() {
        let c =
            run_config(&args(Some("http://127.0.0.1:9/items/{id}"), Some("0..10"), tuning())).expect("valid");
        assert_eq!(c.scope, Scope { ids: Ids::Range(IdRange { start: 0, end: 10 }), shard: None });
        assert_eq!(c.job.headers, vec![("Authorization".to_owned(), "Bearer x".to_owned())]);
        assert!(c.job.max_in_flight >= 2 * c.chunk_size);
    }

    #[test]
    fn bad_runs_are_refused_with_the_flag_named() {
        let t = tuning();
        let cases: Vec<(Option<&str>, Option<&str>, Tuning, &str)> = vec![
            (None, Some("0..1"), t.clone(), "--url is required"),
            (Some("http://127.0.0.1/items"), Some("0..1"), t.clone(), "--url"),
            (Some("ftp://h/{id}"), Some("0..1"), t.clone(), "--url"),
            (Some("http://h/{id}"), None, t.clone(), "--ids or --ids-file is required"),
            (Some("http://h/{id}"), Some("3..1"), t.clone(), "--ids"),
            (Some("http://h/{id}"), Some("0..1"), Tuning { workers: 0, ..t.clone() }, "--workers"),
            (Some("http://h/{id}"), Some("0..1"), Tuning { threads: 0, ..t.clone() }, "--threads"),
            (
                Some("http://h/{id}"),
                Some("0..1"),
                Tuning { headers: vec!["nocolon".into()], ..t.clone() },
                "--header",
            ),
            (
                Some("http://h/{id}"),
                Some("0..1"),
                Tuning { worker_bin: Some("/nonexistent/w".into()), ..t.clone() },
                "--worker-bin",
            ),
        ];
        for (url, ids, t, want) in cases {
            let err = run_config(&args(url, ids, t)).expect_err(want);
            assert!(err.contains(want), "{err:?} should mention {want}");
        }
    }

    #[test]
    fn the_api_is_named_by_host_and_port() {
        assert_eq!(api_of("http://127.0.0.1:18999/items/{id}"), "127.0.0.1:18999");
        assert_eq!(api_of("https://api.example.com/users/{id}?x=1"), "api.example.com:443");
        assert_eq!(api_of("http://u:p@[::1]:8080/{id}"), "[::1]:8080");
        assert_eq!(api_of("http://[::1]/{id}"), "[::1]:80");
    }

    #[test]
    fn an_explicit_shard_wins_over_the_scheduler() {
        let slurm = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("1".to_owned()),
            "SLURM_ARRAY_TASK_COUNT" => Some("4".to_owned()),
            _ => None,
        };
        let given = Shard { index: 3, count: 5 };
        assert_eq!(shard(Some(given), None, slurm), Ok((Some(given), None)));
        assert_eq!(
            shard(None, None, slurm),
            Ok((Some(Shard { index: 1, count: 4 }), Some("SLURM_ARRAY_TASK_ID")))
        );
        assert!(shard(Some(given), Some(4), slurm).is_err(), "--shards disagrees with --shard");
        assert!(shard(None, Some(4), |_| None).expect_err("no index").contains("JOB_COMPLETION_INDEX"));
        assert_eq!(shard(None, None, |_| None), Ok((None, None)));
    }

    #[test]
    fn ids_files_skip_comments_and_name_a_bad_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("ids.txt");
        std::fs::write(&good, "# ids\n42\n\n 7 \n42\n# more\n100000000000\n").expect("write");
        let (ids, source) = read_ids_file(&good).expect("reads");
        assert_eq!(ids, vec![7, 42, 100_000_000_000]);
        assert_eq!(source, good.display().to_string());
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "1\n2\nthree\n").expect("write");
        let err = read_ids_file(&bad).expect_err("refused");
        assert!(err.contains("line 3: `three` is not an id"), "{err}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "# nothing\n\n").expect("write");
        assert!(read_ids_file(&empty).expect_err("refused").contains("holds no id"));
        assert!(read_ids_file(&dir.path().join("none")).is_err());
    }
}
