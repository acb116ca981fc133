//! Who may watch which runs, and cancel them: tokens, their scopes, and
//! where they come from.
//!
//! - `scope`: what a token may do, as capabilities (`caps`), for every kind of token.
//! - `jwt`: `[auth]`'s keys and verifying a JWT into a scope.
//!
//! Tokens are compared in constant time and never logged; `Token`'s `Debug`
//! is redacted. With no token configured, one is generated at first start
//! into `STATE_DIR/token` (mode 0600) and its path, not its value, is logged.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, StreamConfig};

pub(crate) mod jwt;
mod scope;

use jwt::JwtKeys;
pub(crate) use scope::{At, Scope, time_left};

/// Name of the generated viewer token file in the state dir.
pub(crate) const TOKEN_FILE: &str = "token";
/// Random bytes in a generated token (hex-encoded: 64 characters).
const GENERATED_TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    // Causes are in the messages, not `source`s, so a chain prints each once.
    #[error("read token file {}: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("write token file {}: {error}", .path.display())]
    Write { path: PathBuf, error: std::io::Error },
    #[error("token file {0} holds no token")]
    Empty(PathBuf),
    #[error("generate token: {0}")]
    Random(getrandom::Error),
    #[error("JWT key file {}: {reason}", .path.display())]
    Key { path: PathBuf, reason: String },
}

/// A secret. Compared in constant time; prints as `Token(..)`.
#[derive(Clone)]
pub(crate) struct Token(String);

impl Token {
    pub(crate) fn new(s: impl Into<String>) -> Self {
        Token(s.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The accepted tokens. Rebuilt (not mutated) on config reload.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tokens {
    entries: Vec<(Token, Scope)>,
    /// `[auth]`'s keys, when it names any.
    jwt: Option<std::sync::Arc<JwtKeys>>,
}

impl Tokens {
    pub(crate) fn new(entries: Vec<(Token, Scope)>) -> Self {
        Tokens { entries, jwt: None }
    }

    /// Tokens from the config, the configured token file, or else the
    /// generated `STATE_DIR/token` (created on first start); and the JWT
    /// keys of `[auth]`. Any file that does not load is an error, so a
    /// reload that meets one keeps the tokens and keys in force.
    pub(crate) fn load(config: &StreamConfig, auth: &AuthConfig, state_dir: &Path) -> Result<Self, AuthError> {
        let jwt = JwtKeys::load(auth)?.map(std::sync::Arc::new);
        let mut entries: Vec<(Token, Scope)> =
            config.tokens.iter().map(|t| (Token::new(t.clone()), Scope::full())).collect();
        if let Some(path) = &config.token_file {
            entries.extend(read_token_file(path)?.into_iter().map(|t| (t, Scope::full())));
        }
        // Only full tokens spare the generated one: with read-only or
        // restricted tokens alone, nobody could cancel over HTTP.
        let has_full_access = !entries.is_empty();
        entries.extend(config.read_only_tokens.iter().map(|t| (Token::new(t.clone()), Scope::read_only())));
        entries.extend(
            config
                .restricted_tokens
                .iter()
                .map(|r| (Token::new(r.token.clone()), Scope::prefix(&r.run_prefix, r.cancel))),
        );
        if !has_full_access {
            let path = state_dir.join(TOKEN_FILE);
            let token = ensure_token_file(&path)?;
            entries.push((token, Scope::full()));
        }
        Ok(Tokens { entries, jwt })
    }

    /// The scope of the presented token, if it is one of ours. A token of
    /// the JWT shape is verified as one (when `[auth]` has keys); others
    /// are compared with every static entry, so timing does not tell which
    /// (or whether one) matched. Refusals are logged without the token.
    pub(crate) fn check(&self, presented: &str) -> Option<Scope> {
        if let Some(keys) = self.jwt.as_ref().filter(|_| jwt::looks_like_jwt(presented)) {
            return match keys.verify(presented) {
                Ok(scope) => {
                    tracing::debug!(sub = scope.sub(), exp = scope.expires(), "JWT accepted");
                    Some(scope)
                }
                Err(reason) => {
                    tracing::debug!(%reason, "JWT refused");
                    None
                }
            };
        }
        let mut found = None;
        for (token, scope) in &self.entries {
            if token.matches(presented) && found.is_none() {
                found = Some(scope.clone());
            }
        }
        found
    }
}

/// One token per line; blank lines and `#` comments ignored.
fn read_token_file(path: &Path) -> Result<Vec<Token>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|error| AuthError::Read { path: path.to_owned(), error })?;
    let tokens: Vec<Token> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(Token::new).collect();
    if tokens.is_empty() {
        return Err(AuthError::Empty(path.to_owned()));
    }
    Ok(tokens)
}

/// Reads the token at `path`, creating it (mode 0600) if it does not exist.
pub(crate) fn ensure_token_file(path: &Path) -> Result<Token, AuthError> {
    match read_token_file(path) {
        Ok(mut tokens) => return Ok(tokens.swap_remove(0)),
        Err(AuthError::Read { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = generate_token()?;
    let write_err = |error| AuthError::Write { path: path.to_owned(), error };
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(write_err)?;
    writeln!(file, "{}", token.expose()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    tracing::info!(path = %path.display(), "generated a token for HTTP/WebSocket clients");
    Ok(token)
}

pub(crate) fn generate_token() -> Result<Token, AuthError> {
    let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(AuthError::Random)?;
    Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
}

/// The token a request carries: `Authorization: Bearer T`, else `?token=T`.
pub(crate) fn request_token(headers: &http::HeaderMap, query: &[(String, String)]) -> Option<String> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned());
    bearer.or_else(|| query.iter().find(|(k, _)| k == "token").map(|(_, v)| v.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_compare_works() {
        let t = Token::new("secret-value-123456");
        assert_eq!(format!("{t:?}"), "Token(..)");
        assert!(t.matches("secret-value-123456"));
        assert!(!t.matches("secret-value-12345"));
        assert!(!t.matches(""));
    }

    #[test]
    fn generated_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = StreamConfig::default();
        let a = Tokens::load(&cfg, &AuthConfig::default(), dir.path()).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
        assert_eq!(token.len(), 64);
        assert_eq!(a.check(&token), Some(Scope::full()));
        let b = Tokens::load(&cfg, &AuthConfig::default(), dir.path()).unwrap();
        assert_eq!(b.check(&token), Some(Scope::full()), "second start reuses the file");
        assert_eq!(b.check("nope"), None);
    }

    #[test]
    fn configured_tokens_rotate_and_scope() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StreamConfig {
            tokens: vec!["old-token-0123456789".into(), "new-token-0123456789".into()],
            restricted_tokens: vec![crate::config::RestrictedToken {
                token: "team-a-token-0123456".into(),
                run_prefix: "a-".into(),
                cancel: true,
            }],
            read_only_tokens: vec!["read-only-token-0123456".into()],
            ..StreamConfig::default()
        };
        let t = Tokens::load(&cfg, &AuthConfig::default(), dir.path()).unwrap();
        assert_eq!(t.check("old-token-0123456789"), Some(Scope::full()));
        assert_eq!(t.check("new-token-0123456789"), Some(Scope::full()));
        let scope = t.check("team-a-token-0123456").unwrap();
        let id = |s: &str| crate::run_id::RunId::parse(s).unwrap();
        assert!(scope.allows(At::Local, &id("a-1")));
        assert!(!scope.allows(At::Local, &id("b-1")));
        assert!(scope.may_cancel(At::Local, &id("a-1")));
        assert!(!scope.may_cancel(At::Local, &id("b-1")), "never what it cannot see");
        let read_only = t.check("read-only-token-0123456").unwrap();
        assert!(read_only.allows(At::Local, &id("b-1")));
        assert!(!read_only.may_cancel(At::Local, &id("b-1")));
        assert_eq!((read_only.runs_json(), read_only.cancels()), (serde_json::json!("*"), false));
        assert!(!dir.path().join(TOKEN_FILE).exists(), "no file generated when tokens are configured");
    }
}
