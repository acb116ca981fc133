//! JWT viewer tokens: the keys from `[auth]`, and verifying a token into
//! a [`Scope`] (docs/auth.md).
//!
//! Each key carries the one algorithm it is for, and a token is only ever
//! tried against keys of its header's algorithm: an HS256 token "signed"
//! with the bytes of an RSA or Ed25519 public key meets no HMAC key made
//! of those bytes, and `alg: none` is not an algorithm the crate knows.

use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::AuthError;
use super::scope::{Cap, CapClaim, Scope};
use crate::config::AuthConfig;

/// Clock skew allowed on `exp` and `nbf`, in seconds: hosts kept by NTP
/// agree far better, and a token lives minutes to hours, so 30 s neither
/// refuses good tokens nor stretches a stolen one much.
pub(crate) const LEEWAY_SECS: u64 = 30;
/// Shortest HS256 secret accepted: 256 bits, the hash's own size (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;

/// One verification key and the one algorithm it verifies.
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// The keys in force; rebuilt whole on SIGHUP.
pub(crate) struct JwtKeys {
    keys: Vec<Key>,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<String> =
            self.keys.iter().map(|k| format!("{:?} kid={:?}", k.validation.algorithms, k.kid)).collect();
        f.debug_struct("JwtKeys").field("keys", &algs).finish()
    }
}

/// The claims runtap reads; `exp` is required by the validation too.
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    caps: Vec<CapClaim>,
}

/// Why a JWT was refused: logged (without the token), answered `unauthorized`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("no key for algorithm {alg:?} (kid {kid:?})")]
    NoKey { alg: Algorithm, kid: Option<String> },
    #[error("caps: {0}")]
    Caps(String),
}

/// True for `xxx.yyy.zzz` in base64url: a token of that shape is verified
/// as a JWT, anything else is compared with the static tokens.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token.starts_with("eyJ")
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl JwtKeys {
    /// The keys `[auth]` names; `None` when it names none (no JWT accepted).
    pub(crate) fn load(config: &AuthConfig) -> Result<Option<JwtKeys>, AuthError> {
        let mut found: Vec<(Option<String>, Algorithm, DecodingKey)> = Vec::new();
        if let Some(path) = &config.jwt_hs256_secret_file {
            found.push((None, Algorithm::HS256, hs256_secret(path)?));
        }
        for path in &config.jwt_public_keys {
            found.extend(public_keys(path)?);
        }
        if found.is_empty() {
            return Ok(None);
        }
        let keys =
            found.into_iter().map(|(kid, alg, key)| Key { kid, key, validation: validation(config, alg) }).collect();
        Ok(Some(JwtKeys { keys }))
    }

    /// The token's scope, or why not. Only keys of the header's algorithm
    /// are tried; with a `kid`, the keys of that `kid` (or, if none has
    /// it, the keys that have no `kid`: PEM files, the HS256 secret).
    pub(crate) fn verify(&self, token: &str) -> Result<Scope, Refused> {
        let header = jsonwebtoken::decode_header(token)?;
        let of_alg = || self.keys.iter().filter(|k| k.validation.algorithms == [header.alg]);
        let by_kid: Vec<&Key> = match &header.kid {
            Some(kid) if of_alg().any(|k| k.kid.as_ref() == Some(kid)) => {
                of_alg().filter(|k| k.kid.as_ref() == Some(kid)).collect()
            }
            Some(_) => of_alg().filter(|k| k.kid.is_none()).collect(),
            None => of_alg().collect(),
        };
        let mut last = None;
        for key in by_kid {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => return scope(data.claims),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(Refused::NoKey { alg: header.alg, kid: header.kid }, Refused::Jwt))
    }
}

fn scope(claims: Claims) -> Result<Scope, Refused> {
    let caps: Vec<Cap> =
        claims.caps.into_iter().map(Cap::from_claim).collect::<Result<_, _>>().map_err(Refused::Caps)?;
    Ok(Scope::jwt(caps, claims.sub, claims.exp))
}

/// `exp` required, `nbf` honoured, `aud`/`iss` when configured (and then
/// required), one algorithm.
fn validation(config: &AuthConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    match &config.jwt_audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        // Without an audience of ours, one in the token means nothing here.
        None => v.validate_aud = false,
    }
    if let Some(iss) = &config.jwt_issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

fn key_error(path: &Path, reason: impl Into<String>) -> AuthError {
    AuthError::Key { path: path.to_owned(), reason: reason.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|error| AuthError::Read { path: PathBuf::from(path), error })
}

fn hs256_secret(path: &Path) -> Result<DecodingKey, AuthError> {
    let bytes = read(path)?;
    let secret = bytes.trim_ascii();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(key_error(path, format!("an HS256 secret needs at least {MIN_SECRET_BYTES} bytes")));
    }
    DecodingKey::from_secret(secret).map_err(|e| key_error(path, e.to_string()))
}

/// A PEM public key (RSA → RS256, EC → ES256, Ed25519 → EdDSA) or a JWKS.
fn public_keys(path: &Path) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, AuthError> {
    let bytes = read(path)?;
    if bytes.trim_ascii_start().starts_with(b"{") {
        return jwks(path, &bytes);
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(&bytes) {
        return Ok(vec![(None, Algorithm::RS256, k)]);
    }
    if let Ok(k) = DecodingKey::from_ec_pem(&bytes) {
        return Ok(vec![(None, Algorithm::ES256, k)]);
    }
    if let Ok(k) = DecodingKey::from_ed_pem(&bytes) {
        return Ok(vec![(None, Algorithm::EdDSA, k)]);
    }
    Err(key_error(path, "not a PEM RSA, EC (P-256) or Ed25519 public key, nor a JWKS (JSON)"))
}

fn jwks(path: &Path, bytes: &[u8]) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, AuthError> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| key_error(path, format!("JWKS: {e}")))?;
    if set.keys.is_empty() {
        return Err(key_error(path, "JWKS has no keys"));
    }
    let mut out = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Some(Algorithm::ES256),
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
            _ => None,
        };
        let stated = match jwk.common.key_algorithm {
            None => inferred,
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
            Some(_) => None,
        };
        let alg = match (stated, inferred) {
            (Some(a), Some(b)) if a == b => a,
            _ => {
                let what = format!("key {i} (kid {kid:?}): only RS256, ES256 (P-256) and EdDSA (Ed25519) public keys");
                return Err(key_error(path, what));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| key_error(path, format!("key {i} (kid {kid:?}): {e}")))?;
        out.push((kid, alg, key));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;
    use crate::auth::At;
    use crate::run_id::RunId;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn keys(dir: &Path, aud: Option<&str>) -> JwtKeys {
        let secret = dir.join("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let config = AuthConfig {
            jwt_hs256_secret_file: Some(secret),
            jwt_public_keys: vec![
                format!("{FIXTURES}/ed25519-public.pem").into(),
                format!("{FIXTURES}/rsa-public.pem").into(),
            ],
            jwt_audience: aud.map(str::to_owned),
            jwt_issuer: None,
        };
        JwtKeys::load(&config).unwrap().unwrap()
    }

    fn hs(claims: &serde_json::Value, secret: &[u8]) -> String {
        encode(&Header::default(), claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    }

    fn ed(claims: &serde_json::Value) -> String {
        let pem = std::fs::read(format!("{FIXTURES}/ed25519-private.pem")).unwrap();
        encode(&Header::new(Algorithm::EdDSA), claims, &EncodingKey::from_ed_pem(&pem).unwrap()).unwrap()
    }

    fn claims(exp: u64) -> serde_json::Value {
        json!({"sub": "ci", "exp": exp, "caps": [{"runs": ["build-*"], "allow": ["read"]}]})
    }

    #[test]
    fn hs256_and_eddsa_verify_into_caps() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), None);
        for token in [hs(&claims(now() + 60), SECRET.as_bytes()), ed(&claims(now() + 60))] {
            assert!(looks_like_jwt(&token));
            let scope = k.verify(&token).unwrap();
            assert_eq!(scope.sub(), Some("ci"));
            assert!(scope.allows(At::Local, &RunId::parse("build-1").unwrap()));
            assert!(!scope.allows(At::Local, &RunId::parse("other-1").unwrap()));
            assert!(!scope.cancels());
        }
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), Some("runtap"));
        let good = json!({"exp": now() + 60, "aud": "runtap", "caps": []});
        assert!(k.verify(&hs(&good, SECRET.as_bytes())).is_ok());
        let mut expired = good.clone();
        expired["exp"] = json!(now() - LEEWAY_SECS - 5);
        let mut early = good.clone();
        early["nbf"] = json!(now() + LEEWAY_SECS + 60);
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("other");
        let no_exp = json!({"aud": "runtap", "caps": []});
        let no_caps = json!({"exp": now() + 60, "aud": "runtap"});
        let ed_pub = std::fs::read(format!("{FIXTURES}/ed25519-public.pem")).unwrap();
        let rsa_pub = std::fs::read(format!("{FIXTURES}/rsa-public.pem")).unwrap();
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&good.to_string()));
        let signed = hs(&good, SECRET.as_bytes());
        let refused = [
            hs(&expired, SECRET.as_bytes()),
            hs(&early, SECRET.as_bytes()),
            hs(&wrong_aud, SECRET.as_bytes()),
            hs(&no_exp, SECRET.as_bytes()),
            hs(&no_caps, SECRET.as_bytes()),
            hs(&good, &ed_pub),
            hs(&good, &rsa_pub),
            none,
            signed[..signed.len() - 4].to_owned(),
            "eyJnot.a.jwt".to_owned(),
        ];
        for (i, token) in refused.iter().enumerate() {
            assert!(k.verify(token).is_err(), "case {i} accepted");
        }
    }

    #[test]
    fn broken_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "tiny").unwrap();
        let jwks = dir.path().join("keys.json");
        std::fs::write(&jwks, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
        for config in [
            AuthConfig { jwt_public_keys: vec![bad.clone()], ..AuthConfig::default() },
            AuthConfig { jwt_hs256_secret_file: Some(short.clone()), ..AuthConfig::default() },
            AuthConfig { jwt_public_keys: vec![jwks.clone()], ..AuthConfig::default() },
            AuthConfig { jwt_public_keys: vec![dir.path().join("missing.pem")], ..AuthConfig::default() },
        ] {
            let err = JwtKeys::load(&config).unwrap_err().to_string();
            assert!(err.contains(dir.path().to_str().unwrap()), "{err}");
        }
        assert!(JwtKeys::load(&AuthConfig::default()).unwrap().is_none());
    }

    fn b64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    /// `cargo test --release --lib jwt::tests::cost -- --ignored --nocapture`:
    /// the time one verification adds to a connection.
    #[test]
    #[ignore]
    fn cost() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), None);
        for (name, token) in
            [("HS256", hs(&claims(now() + 600), SECRET.as_bytes())), ("EdDSA", ed(&claims(now() + 600)))]
        {
            let n = 20_000;
            let start = std::time::Instant::now();
            for _ in 0..n {
                assert!(k.verify(&token).is_ok());
            }
            println!("{name}: {:.1} µs per verification", start.elapsed().as_secs_f64() * 1e6 / f64::from(n));
        }
    }
}
