//! Ranges and cross-field rules that the types cannot express. Every
//! refusal names the dotted key and never echoes a token.

use std::net::SocketAddr;

use super::defaults::{KIB, MIB};
use super::{Config, ConfigError, DEFAULT_LISTEN, MIN_TOKEN_LEN};

impl Config {
    /// Checks ranges and cross-field rules that the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|(key, reason)| ConfigError::Invalid { file: self.path.clone(), key, reason })
    }

    fn check(&self) -> Result<(), (String, String)> {
        let (d, r, j, s) = (&self.daemon, &self.runs, &self.journal, &self.stream);
        let not_empty = || "must not be empty".to_owned();
        ensure(!d.state_dir.as_os_str().is_empty(), "daemon.state_dir", not_empty)?;
        ensure(!d.socket.as_os_str().is_empty(), "daemon.socket", not_empty)?;
        // "Others" could connect and launch runs as the daemon's user: refuse outright.
        let mode = d.socket_mode;
        ensure(mode & 0o007 == 0 && mode & !0o777 == 0 && mode & 0o600 == 0o600, "daemon.socket_mode", || {
            format!("{mode:04o}: must give the owner read/write and others nothing (e.g. 0660, 0600)")
        })?;
        ensure(d.listen.parse::<SocketAddr>().is_ok(), "daemon.listen", || {
            format!("invalid socket address {:?}: expected IP:PORT, e.g. {DEFAULT_LISTEN:?}", d.listen)
        })?;
        ensure(!d.log_level.trim().is_empty(), "daemon.log_level", not_empty)?;
        tracing_subscriber::EnvFilter::try_new(&d.log_level)
            .map_err(|e| ("daemon.log_level".to_owned(), format!("invalid filter {:?}: {e}", d.log_level)))?;
        // Zero periods would panic `tokio::time::interval`; zero deadlines would reject everyone.
        for (key, value) in [
            ("journal.fsync_interval", j.fsync_interval),
            ("journal.retention_check_interval", j.retention_check_interval),
            ("stream.ping_interval", s.ping_interval),
            ("stream.handshake_timeout", s.handshake_timeout),
            ("stream.auth_timeout", s.auth_timeout),
            ("stream.write_stall_timeout", s.write_stall_timeout),
            ("stream.socketio.metrics_interval", s.socketio.metrics_interval),
        ] {
            ensure(!value.is_zero(), key, || "must be greater than zero".to_owned())?;
        }
        ensure(s.ping_timeout > s.ping_interval, "stream.ping_timeout", || {
            "must be longer than stream.ping_interval".to_owned()
        })?;
        for (key, value, min) in [
            ("runs.max_concurrent", r.max_concurrent, 1),
            ("runs.pty_cols", r.pty_cols.into(), 1),
            ("runs.pty_rows", r.pty_rows.into(), 1),
            ("stream.max_frame_bytes", s.max_frame_bytes, KIB),
            ("stream.max_connections", s.max_connections, 1),
            ("stream.max_messages_per_second", s.max_messages_per_second as usize, 1),
            ("stream.rate_burst", s.rate_burst as usize, 1),
            ("stream.max_json_depth", s.max_json_depth, 1),
            ("stream.subscriber_queue_bytes", s.subscriber_queue_bytes, 64 * KIB),
            ("stream.subscriber_queue_batches", s.subscriber_queue_batches, 1),
            ("stream.socketio.subscribe_per_minute", s.socketio.subscribe_per_minute as usize, 1),
            ("stream.socketio.unsubscribe_per_minute", s.socketio.unsubscribe_per_minute as usize, 1),
            ("stream.socketio.ping_per_minute", s.socketio.ping_per_minute as usize, 1),
            ("stream.socketio.get_status_per_minute", s.socketio.get_status_per_minute as usize, 1),
        ] {
            ensure(value >= min, key, || format!("must be at least {min} (got {value})"))?;
        }
        ensure(s.max_frame_bytes <= 16 * MIB, "stream.max_frame_bytes", || {
            format!("must be at most {} (16 MiB)", 16 * MIB)
        })?;
        let named_tokens = s.tokens.iter().enumerate().map(|(i, t)| (format!("stream.tokens[{i}]"), t));
        let read_only =
            s.read_only_tokens.iter().enumerate().map(|(i, t)| (format!("stream.read_only_tokens[{i}]"), t));
        let restricted = s
            .restricted_tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("stream.restricted_tokens[{i}].token"), &t.token));
        for (key, token) in named_tokens.chain(read_only).chain(restricted) {
            // Never echo the token itself: this message goes to logs.
            let ok = token.chars().count() >= MIN_TOKEN_LEN && !token.chars().any(char::is_whitespace);
            ensure(ok, &key, || format!("must be at least {MIN_TOKEN_LEN} characters without whitespace"))?;
        }
        // The first matching entry decides, so a token in both lists would be
        // silently full: say so instead.
        for (i, t) in s.read_only_tokens.iter().enumerate() {
            ensure(!s.tokens.contains(t), &format!("stream.read_only_tokens[{i}]"), || {
                "is also in stream.tokens (which would let it cancel)".to_owned()
            })?;
        }
        ensure(s.token_file.as_ref().is_none_or(|p| !p.as_os_str().is_empty()), "stream.token_file", not_empty)?;
        ensure(s.tls_cert.as_deref().is_none_or(|p| !empty_path(p)), "stream.tls_cert", not_empty)?;
        ensure(s.tls_key.as_deref().is_none_or(|p| !empty_path(p)), "stream.tls_key", not_empty)?;
        ensure(s.tls_cert.is_some() == s.tls_key.is_some(), "stream.tls_cert", || {
            "and stream.tls_key go together: set both or neither".into()
        })?;
        let u = &self.upstream;
        for (i, url) in u.url.iter().enumerate() {
            let key = if u.url.len() == 1 { "upstream.url".to_owned() } else { format!("upstream.url[{i}]") };
            ensure(gateway_url_ok(url), &key, || {
                format!("must be ws://HOST:PORT or wss://HOST:PORT, without user:password (got {url:?})")
            })?;
            ensure(!u.url[..i].contains(url), &key, || format!("{url:?} is listed twice"))?;
        }
        if !u.url.is_empty() {
            ensure(u.token_file.is_some(), "upstream.token_file", || "is required with upstream.url".into())?;
        }
        ensure(u.ca_file.as_deref().is_none_or(|p| !empty_path(p)), "upstream.ca_file", not_empty)?;
        if let Some(host) = &u.host_id {
            ensure(crate::run_id::RunId::parse(host).is_ok(), "upstream.host_id", || {
                "must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127}".into()
            })?;
        }
        for (i, token) in self.gateway.agent_tokens.iter().enumerate() {
            let ok = token.chars().count() >= MIN_TOKEN_LEN && !token.chars().any(char::is_whitespace);
            ensure(ok, &format!("gateway.agent_tokens[{i}]"), || {
                format!("must be at least {MIN_TOKEN_LEN} characters without whitespace")
            })?;
        }
        ensure(!self.gateway.ack_interval.is_zero(), "gateway.ack_interval", || "must be greater than zero".into())?;
        self.check_nats()?;
        self.check_auth()
    }

    /// `[gateway]`'s NATS engine: where it is, and limits JetStream accepts.
    fn check_nats(&self) -> Result<(), (String, String)> {
        let g = &self.gateway;
        if g.engine == super::GatewayEngine::Nats {
            ensure(!g.nats_url.is_empty(), "gateway.nats_url", || "is required with engine = \"nats\"".into())?;
        }
        for (i, url) in g.nats_url.iter().enumerate() {
            let ok = ["nats://", "tls://"].iter().any(|p| url.starts_with(p)) || !url.contains("://");
            ensure(ok, &format!("gateway.nats_url[{i}]"), || {
                format!("must be nats://HOST:PORT or tls://HOST:PORT (got {url:?})")
            })?;
        }
        ensure((1..=5).contains(&g.nats_replicas), "gateway.nats_replicas", || "must be 1 to 5".into())?;
        ensure(!g.nats_max_age.is_zero(), "gateway.nats_max_age", || "must be greater than zero".into())?;
        ensure(i64::try_from(g.nats_max_bytes).is_ok_and(|b| b > 0), "gateway.nats_max_bytes", || {
            "must be greater than zero and below 2^63".into()
        })
    }

    /// `[auth]`: the shapes only; whether the key files load is the token
    /// loader's question (it runs at start and on every SIGHUP).
    fn check_auth(&self) -> Result<(), (String, String)> {
        let a = &self.auth;
        ensure(!a.jwt_hs256_secret_file.as_deref().is_some_and(empty_path), "auth.jwt_hs256_secret_file", || {
            "must not be empty".into()
        })?;
        for (i, p) in a.jwt_public_keys.iter().enumerate() {
            ensure(!empty_path(p), &format!("auth.jwt_public_keys[{i}]"), || "must not be empty".into())?;
        }
        let has_keys = a.jwt_hs256_secret_file.is_some() || !a.jwt_public_keys.is_empty();
        for (key, value) in [("auth.jwt_audience", &a.jwt_audience), ("auth.jwt_issuer", &a.jwt_issuer)] {
            ensure(value.as_ref().is_none_or(|v| !v.trim().is_empty()), key, || "must not be empty".into())?;
            ensure(value.is_none() || has_keys, key, || {
                "has no effect without auth.jwt_hs256_secret_file or auth.jwt_public_keys".into()
            })?;
        }
        Ok(())
    }
}

/// `Err((key, reason))` unless `ok`; the reason is only built on failure.
fn ensure(ok: bool, key: &str, reason: impl FnOnce() -> String) -> Result<(), (String, String)> {
    if ok { Ok(()) } else { Err((key.to_owned(), reason())) }
}

/// `ws://` or `wss://` with a host, as the link's WebSocket client will
/// parse it, and no user:password (credentials go in `token_file`; a URL is
/// logged and shown in `/metrics`).
fn gateway_url_ok(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    let no_userinfo = uri.authority().is_some_and(|a| !a.as_str().contains('@'));
    matches!(uri.scheme_str(), Some("ws" | "wss")) && uri.host().is_some_and(|h| !h.is_empty()) && no_userinfo
}

fn empty_path(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}
