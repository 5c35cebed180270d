//! Bearer tokens that expire, for tests of a client's credentials: an OAuth 2.0 token endpoint
//! (`POST /oauth/token`: the client-credentials grant with the client authenticated by HTTP
//! Basic or in the form, and the refresh-token grant with single-use refresh tokens, rotated on
//! every use) whose access tokens last `--token-lifetime`; a static token (`--static-token`);
//! and a revocation of every token after the N-th item request (`--revoke-after`). Item routes
//! then answer 401 to a request without a token that is valid now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// What a server's credentials are.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// How long an access token lasts; `None`: the token endpoint is off.
    pub lifetime: Option<Duration>,
    /// The client the token endpoint knows.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// A token valid from the start that never expires (until revoked).
    pub static_token: Option<String>,
    /// A refresh token valid from the start (single use).
    pub refresh_token: Option<String>,
    /// After this many item requests, every token issued so far (and the static one) is refused.
    pub revoke_after: Option<u64>,
}

/// The tokens in force.
pub struct Guard {
    config: AuthConfig,
    tokens: Mutex<Tokens>,
    /// Access tokens issued.
    pub issued: AtomicU64,
    /// Item requests answered 401.
    pub refused: AtomicU64,
}

#[derive(Default)]
struct Tokens {
    /// Access token: when it expires, and its serial.
    access: HashMap<String, (Option<Instant>, u64)>,
    /// The one refresh token that works now.
    refresh: Option<String>,
    /// Tokens of serials up to this one are revoked.
    revoked_upto: Option<u64>,
    /// Whether the static token is revoked.
    static_revoked: bool,
}

/// A token endpoint's answer: status and JSON body.
pub type Answer = (u16, String);

impl Guard {
    /// Tokens as `config` says.
    pub fn new(config: AuthConfig) -> Guard {
        let tokens = Tokens { refresh: config.refresh_token.clone(), ..Tokens::default() };
        Guard { config, tokens: Mutex::new(tokens), issued: AtomicU64::new(0), refused: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the `nth` item request, with this `Authorization` header, may be served.
    pub fn admits(&self, authorization: Option<&str>, nth: u64) -> bool {
        let mut t = self.lock();
        if self.config.revoke_after.is_some_and(|n| nth > n) && t.revoked_upto.is_none() {
            t.revoked_upto = Some(self.issued.load(Ordering::Relaxed));
            t.static_revoked = true;
        }
        let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            drop(t);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let ok = if self.config.static_token.as_deref() == Some(token) {
            !t.static_revoked
        } else {
            match t.access.get(token) {
                Some(&(expires, serial)) => {
                    expires.is_none_or(|at| Instant::now() < at) && t.revoked_upto.is_none_or(|r| serial > r)
                }
                None => false,
            }
        };
        drop(t);
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// `POST /oauth/token` with this `Authorization` header and form body.
    pub fn token(&self, authorization: Option<&str>, form: &str) -> Answer {
        let Some(lifetime) = self.config.lifetime else {
            return (404, r#"{"error":"not_found"}"#.into());
        };
        let fields = parse_form(form);
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let basic = authorization
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|pair| pair.split_once(':').map(|(i, s)| (decode(i), decode(s))));
        let client = match (basic, field("client_id"), field("client_secret")) {
            (Some((id, secret)), None, None) => Some((id, Some(secret))),
            (None, Some(id), secret) => Some((id.to_owned(), secret.map(str::to_owned))),
            _ => None,
        };
        let invalid_client = (401, r#"{"error":"invalid_client"}"#.to_owned());
        let Some((id, secret)) = client else { return invalid_client };
        if id != self.config.client_id {
            return invalid_client;
        }
        let mut t = self.lock();
        let rotated = match field("grant_type") {
            Some("client_credentials") => {
                if secret.as_deref() != Some(self.config.client_secret.as_str()) {
                    return invalid_client;
                }
                None
            }
            Some("refresh_token") => {
                if secret.is_some_and(|s| s != self.config.client_secret) {
                    return invalid_client;
                }
                if field("refresh_token").is_none() || t.refresh.as_deref() != field("refresh_token") {
                    return (400, r#"{"error":"invalid_grant"}"#.into());
                }
                let serial = self.issued.load(Ordering::Relaxed) + 1;
                let new = format!("rt-{serial}-{:08x}", crate::mix(serial, 0xfe11));
                t.refresh = Some(new.clone());
                Some(new)
            }
            _ => return (400, r#"{"error":"unsupported_grant_type"}"#.into()),
        };
        let serial = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("at-{serial}-{:016x}", crate::mix(serial, 0xacce55));
        t.access.insert(token.clone(), (Some(Instant::now() + lifetime), serial));
        let mut answer = serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs_f64(),
        });
        if let Some(r) = rotated {
            answer["refresh_token"] = r.into();
        }
        (200, answer.to_string())
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// An `application/x-www-form-urlencoded` body's fields.
fn parse_form(form: &str) -> Vec<(String, String)> {
    form.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}
