//! Obtaining one credential from a source: running the helper and reading what it prints, or
//! asking the OAuth 2.0 token endpoint.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::job::{ClientAuth, CredentialSource, OAuth2Client};

/// How long a helper may run, or a token request take, before it is given up as failed.
pub const OBTAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A token, and how long it is good for (`None`: until refused).
pub struct Issued {
    /// The token (a secret: never logged).
    pub token: String,
    /// Its lifetime from now.
    pub lifetime: Option<Duration>,
}

/// Why no credential came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The source refused, and asking again will not change it: a helper's output that is not
    /// a credential, a token endpoint's `invalid_client`.
    Refused(String),
    /// Worth asking again: a helper that failed, a token endpoint down or unreachable.
    Failed(String),
}

impl Failure {
    /// What happened, in a line.
    pub fn why(&self) -> &str {
        match self {
            Failure::Refused(w) | Failure::Failed(w) => w,
        }
    }
}

/// Asks `source` for a credential.
pub fn obtain(source: &CredentialSource, agent: &ureq::Agent) -> Result<Issued, Failure> {
    match source {
        CredentialSource::Command(cmd) => run_helper(cmd),
        CredentialSource::OAuth2(client) => token_request(client, agent),
    }
}

/// Runs the helper with `sh -c`, its stdout read, its stderr the supervisor's: at most
/// [`OBTAIN_TIMEOUT`], then it is killed. It has the supervisor's environment but flota's own
/// settings (`FLOTA_*`, which may hold a secret).
fn run_helper(cmd: &str) -> Result<Issued, Failure> {
    let mut command = Command::new("/bin/sh");
    for (var, _) in std::env::vars_os() {
        if var.to_str().is_some_and(|v| v.starts_with("FLOTA_")) {
            command.env_remove(var);
        }
    }
    let mut child = command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Failure::Refused(format!("cannot run the credential helper: {e}")))?;
    let mut stdout = child.stdout.take().expect("stdout was piped");
    // Read on a thread of its own, so a helper that hangs can be killed at the deadline.
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.by_ref().take(1 << 20).read_to_end(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + OBTAIN_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let secs = OBTAIN_TIMEOUT.as_secs();
                return Err(Failure::Failed(format!(
                    "the credential helper ran {secs}s without ending: killed"
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Failure::Failed(format!("cannot wait for the credential helper: {e}"))),
        }
    };
    let out = reader.join().map_err(|_| Failure::Failed("the helper's reader panicked".into()))?;
    if !status.success() {
        return Err(Failure::Failed(format!("the credential helper failed ({status})")));
    }
    let out = out.map_err(|e| Failure::Failed(format!("cannot read the credential helper's output: {e}")))?;
    helper_output(&out, SystemTime::now()).map_err(Failure::Refused)
}

/// kubectl's `ExecCredential` (the part flota reads).
#[derive(Deserialize)]
struct ExecCredential {
    status: Option<ExecStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecStatus {
    token: Option<String>,
    expiration_timestamp: Option<String>,
}

/// A token endpoint's answer (RFC 6749 5.1), as a helper may print it too.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
}

/// A token endpoint's refusal (RFC 6749 5.2).
#[derive(Deserialize)]
struct TokenError {
    error: String,
    error_description: Option<String>,
}

/// What a helper printed, as one of the three forms: kubectl's `ExecCredential` JSON
/// (`status.token`, `status.expirationTimestamp` in RFC 3339 UTC), an OAuth 2.0 token answer
/// (`access_token`, `expires_in` seconds), or a bare token on one line (no expiry). Anything
/// else is refused, in words that never repeat the output (it may hold a secret).
pub fn helper_output(out: &[u8], now: SystemTime) -> Result<Issued, String> {
    let text =
        std::str::from_utf8(out).map_err(|_| "the credential helper's output is not UTF-8".to_owned())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("the credential helper printed nothing".into());
    }
    if !text.starts_with('{') {
        if text.lines().count() > 1 {
            return Err(
                "the credential helper printed more than one line, and not JSON: print the token alone, \
                        an ExecCredential, or an OAuth 2.0 token answer"
                    .into(),
            );
        }
        return Ok(Issued { token: token(text)?, lifetime: None });
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("the credential helper printed JSON that does not parse ({e})"))?;
    if value.get("access_token").is_some() {
        let answer: TokenAnswer = serde_json::from_value(value)
            .map_err(|e| format!("the credential helper's access_token answer is malformed ({e})"))?;
        return issued_of(answer).map(|(issued, _)| issued);
    }
    if value.get("status").is_some() || value.get("kind").is_some() {
        let exec: ExecCredential = serde_json::from_value(value)
            .map_err(|e| format!("the credential helper's ExecCredential is malformed ({e})"))?;
        let status = exec.status.ok_or("the credential helper's ExecCredential has no status")?;
        let token_text = status.token.ok_or(
            "the credential helper's ExecCredential has no status.token (client certificates are not taken)",
        )?;
        let lifetime = match status.expiration_timestamp {
            None => None,
            Some(at) => {
                let at = humantime::parse_rfc3339_weak(at.trim_end_matches('Z')).map_err(|_| {
                    format!("status.expirationTimestamp `{at}` is not an RFC 3339 time in UTC (2026-01-02T15:04:05Z)")
                })?;
                Some(
                    at.duration_since(now)
                        .map_err(|_| "the credential helper's token has already expired")?,
                )
            }
        };
        return Ok(Issued {
            token: token(&token_text)?,
            lifetime: lifetime.map(at_least_a_second).transpose()?,
        });
    }
    Err("the credential helper printed JSON with neither status.token (ExecCredential) nor access_token"
        .into())
}

/// A token as it goes in `Authorization: Bearer` (RFC 6750's b64token: visible ASCII, no space).
fn token(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token is not one word of visible ASCII (RFC 6750 b64token)".into());
    }
    Ok(text.to_owned())
}

fn at_least_a_second(lifetime: Duration) -> Result<Duration, String> {
    if lifetime < Duration::from_secs(1) {
        return Err("the token lasts less than a second".into());
    }
    Ok(lifetime)
}

/// A token answer's credential, and the refresh token it came with.
fn issued_of(answer: TokenAnswer) -> Result<(Issued, Option<String>), String> {
    if let Some(t) = answer.token_type.as_deref().filter(|t| !t.eq_ignore_ascii_case("bearer")) {
        return Err(format!("the token is of type `{t}`, and flota sends bearer tokens only"));
    }
    let lifetime = match answer.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        // Some servers write it as a string.
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    }
    .map(|secs| {
        if secs.is_finite() && secs >= 0.0 {
            at_least_a_second(Duration::from_secs_f64(secs.min(1e9)))
        } else {
            Err("expires_in is not a number of seconds".into())
        }
    })
    .transpose()?;
    Ok((Issued { token: token(&answer.access_token)?, lifetime }, answer.refresh_token))
}

/// Form-encodes a client's id or secret for HTTP Basic (RFC 6749 2.3.1).
fn form_encoded(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, shared::template::NOT_UNRESERVED).to_string()
}

/// One token request: the client-credentials grant, or the refresh-token grant when the client
/// has a refresh token file (whose token, rotated, is written back before the access token is
/// handed out).
fn token_request(client: &OAuth2Client, agent: &ureq::Agent) -> Result<Issued, Failure> {
    let refresh = match &client.refresh_token_file {
        None => None,
        Some(file) => Some(read_refresh_token(file).map_err(Failure::Refused)?),
    };
    let mut form: Vec<(&str, &str)> = match &refresh {
        None => vec![("grant_type", "client_credentials")],
        Some(token) => vec![("grant_type", "refresh_token"), ("refresh_token", token.as_str())],
    };
    if let Some(scope) = &client.scope {
        form.push(("scope", scope));
    }
    let mut req = agent.post(&client.token_url).header("accept", "application/json");
    match (&client.secret, client.client_auth) {
        (Some(secret), ClientAuth::Basic) => {
            use base64::Engine as _;
            let pair = format!("{}:{}", form_encoded(&client.client_id), form_encoded(&secret.0));
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            req = req.header("authorization", format!("Basic {basic}"));
        }
        (Some(secret), ClientAuth::Body) => {
            form.push(("client_id", &client.client_id));
            form.push(("client_secret", &secret.0));
        }
        // A public client names itself in the body.
        (None, _) => form.push(("client_id", &client.client_id)),
    }
    let endpoint = &client.token_url;
    let mut resp = req.send_form(form).map_err(|e| {
        let why = e.to_string().replace('\n', " ");
        match e {
            ureq::Error::BadUri(_) | ureq::Error::HostNotFound => {
                Failure::Refused(format!("cannot reach the token endpoint {endpoint}: {why}"))
            }
            _ => Failure::Failed(format!("the token endpoint {endpoint} did not answer: {why}")),
        }
    })?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
    if status != 200 {
        let said = serde_json::from_str::<TokenError>(&body)
            .map(|e| match e.error_description {
                Some(d) => format!(": {} ({})", e.error, d.replace('\n', " ")),
                None => format!(": {}", e.error),
            })
            .unwrap_or_default();
        let why = format!("the token endpoint {endpoint} answered {status}{said}");
        // 5xx, 408 and 429 may pass; RFC 6749's refusals (400, 401) will not.
        return Err(if shared::api_failure(status) || status == 429 {
            Failure::Failed(why)
        } else {
            Failure::Refused(why)
        });
    }
    let answer: TokenAnswer = serde_json::from_str(&body).map_err(|e| {
        Failure::Refused(format!("the token endpoint {endpoint} answered 200 without a token answer ({e})"))
    })?;
    let (issued, rotated) = issued_of(answer).map_err(Failure::Refused)?;
    if let (Some(file), Some(new), Some(old)) = (&client.refresh_token_file, rotated, refresh) {
        if new != old {
            write_refresh_token(file, &new).map_err(|e| {
                Failure::Refused(format!(
                    "cannot write the rotated refresh token to {}: {e} (the old one no longer works)",
                    file.display()
                ))
            })?;
        }
    }
    Ok(issued)
}

/// The refresh token in `file`: its first line.
fn read_refresh_token(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(format!("{} holds no refresh token", file.display()));
    }
    Ok(token.to_owned())
}

/// Replaces `file` with `token` atomically, readable by its owner alone: written to a new file
/// beside it (0600), synced, renamed over it, and the directory synced.
fn write_refresh_token(file: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.flota-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_helper_may_print_an_exec_credential_a_token_answer_or_a_bare_token() {
        // 2026-12-06T18:00:00Z
        let now = at(1_796_580_000);
        let exec = br#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",
            "status":{"token":"k8s-tok","expirationTimestamp":"2026-12-06T18:10:00Z"}}"#;
        let i = helper_output(exec, now).expect("an ExecCredential");
        assert_eq!((i.token.as_str(), i.lifetime), ("k8s-tok", Some(Duration::from_secs(600))));
        let oauth = br#"{"access_token":"abc.def","token_type":"Bearer","expires_in":3600}"#;
        let i = helper_output(oauth, now).expect("a token answer");
        assert_eq!((i.token.as_str(), i.lifetime), ("abc.def", Some(Duration::from_secs(3600))));
        let i = helper_output(br#"{"access_token":"x","expires_in":"5"}"#, now).expect("a string");
        assert_eq!(i.lifetime, Some(Duration::from_secs(5)));
        let i = helper_output(b"ghp_token123\n", now).expect("a bare token");
        assert_eq!((i.token.as_str(), i.lifetime), ("ghp_token123", None));
        let i =
            helper_output(br#"{"kind":"ExecCredential","status":{"token":"t"}}"#, now).expect("no expiry");
        assert_eq!(i.lifetime, None);
    }

    #[test]
    fn other_output_is_refused_without_repeating_it() {
        let now = at(1_796_580_000);
        let bad: [&[u8]; 9] = [
            b"",
            b"two\nlines",
            b"has space",
            b"{not json",
            br#"{"token":"s3cret"}"#,
            br#"{"access_token":"s3cret","token_type":"mac"}"#,
            br#"{"access_token":"s3cret","expires_in":0}"#,
            br#"{"kind":"ExecCredential","status":{"clientCertificateData":"s3cret"}}"#,
            br#"{"kind":"ExecCredential","status":{"token":"s3cret","expirationTimestamp":"2026-12-06T17:00:00Z"}}"#,
        ];
        for out in bad {
            let e = helper_output(out, now)
                .err()
                .unwrap_or_else(|| panic!("{:?} taken", String::from_utf8_lossy(out)));
            assert!(!e.contains("s3cret") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_rotated_refresh_token_replaces_the_file_readable_by_its_owner_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a dir");
        let file = dir.path().join("refresh");
        std::fs::write(&file, "old\n").expect("writes");
        write_refresh_token(&file, "new-token").expect("replaced");
        assert_eq!(read_refresh_token(&file).expect("reads"), "new-token");
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("lists").count(), 1, "no temporary file left");
        assert_eq!(form_encoded("a b:c/d"), "a%20b%3Ac%2Fd");
    }
}
