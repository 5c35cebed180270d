//! Where a run's credential comes from (`--auth-command`, `--oauth2-*`): settings only; the
//! `auth` layer obtains and renews it.

use std::path::PathBuf;

use shared::Secret;

/// A source of credentials that expire, held by the supervisor.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// `--auth-command`: a helper run with `sh -c`, printing a token (and its expiry).
    Command(String),
    /// `--oauth2-token-url` and the rest: an OAuth 2.0 token endpoint.
    OAuth2(OAuth2Client),
}

/// An OAuth 2.0 client (RFC 6749): the client-credentials grant (4.4), or the refresh-token
/// grant (6) when it holds a refresh token.
#[derive(Debug, Clone)]
pub struct OAuth2Client {
    /// The token endpoint.
    pub token_url: String,
    /// The client's id.
    pub client_id: String,
    /// Its secret (`--oauth2-client-secret-file`, `FLOTA_OAUTH2_CLIENT_SECRET`); a public
    /// client of the refresh-token grant has none.
    pub secret: Option<Secret>,
    /// The scope asked for, if any.
    pub scope: Option<String>,
    /// How the client authenticates itself to the endpoint.
    pub client_auth: ClientAuth,
    /// `--oauth2-refresh-token-file`: the refresh token, written back when the server rotates it.
    pub refresh_token_file: Option<PathBuf>,
}

/// How a client authenticates to the token endpoint (RFC 6749 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic, the id and secret form-encoded (`client_secret_basic`): what the RFC prefers.
    Basic,
    /// In the form body (`client_secret_post`).
    Body,
}

impl CredentialSource {
    /// What it is, for `config` and the log: never a secret.
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Command(_) => "--auth-command".to_owned(),
            CredentialSource::OAuth2(c) => {
                let grant =
                    if c.refresh_token_file.is_some() { "refresh token" } else { "client credentials" };
                format!("OAuth 2.0 {grant} at {}", c.token_url)
            }
        }
    }
}
