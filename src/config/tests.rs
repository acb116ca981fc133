//! The config's unit tests: layering, errors that name the key, validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::layers::parse_file;
use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
}

/// Asserts that `text` is refused with a message starting `config x.toml: {want}`.
fn refused(text: &str, want: &str) -> String {
    let msg = Config::from_toml_str(text, Some(Path::new("x.toml"))).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("config x.toml: {want}")), "{text:?} gave: {msg}");
    msg
}

#[test]
fn defaults_validate() {
    Config::default().validate().unwrap();
    let config = Config::load_with(&Overrides::default(), env_of(&[])).unwrap();
    assert_eq!(config.daemon.socket, config.daemon.state_dir.join("runtap.sock"));
    assert!(config.daemon.state_dir.ends_with("runtap-data"));
}

#[test]
fn xdg_dirs_are_used() {
    let env = env_of(&[("XDG_STATE_HOME", "/st"), ("XDG_RUNTIME_DIR", "/run/user/1")]);
    let config = Config::load_with(&Overrides::default(), env).unwrap();
    assert_eq!(config.daemon.state_dir, Path::new("/st/runtap"));
    assert_eq!(config.daemon.socket, Path::new("/run/user/1/runtap.sock"));
}

#[test]
fn full_example_parses() {
    let text = r#"
        [daemon]
        state_dir = "/var/lib/runtap"
        socket = "/run/runtap.sock"
        socket_mode = "0600"
        listen = "0.0.0.0:9000"
        log_level = "debug,hyper=info"
        [runs]
        max_concurrent = 8
        grace_period = "3s"
        drain_timeout = "500ms"
        line_hold = "5ms"
        pty_cols = 80
        pty_rows = 24
        [journal]
        fsync_interval = "250ms"
        retention_max_age = "1d"
        retention_max_bytes = 1_000_000
        retention_check_interval = "1m"
        [stream]
        tokens = ["0123456789abcdef"]
        token_file = "/etc/runtap/tokens"
        ping_interval = "5s"
        ping_timeout = "15s"
        max_frame_bytes = 2048
        max_connections = 10
        handshake_timeout = "1s"
        auth_timeout = "2s"
        max_messages_per_second = 5
        rate_burst = 6
        max_json_depth = 4
        subscriber_queue_bytes = 65536
        subscriber_queue_batches = 7
        write_stall_timeout = "9s"
        allowed_origins = ["https://ci.example"]
    "#;
    let c = Config::from_toml_str(text, None).unwrap();
    assert_eq!(c.daemon.socket, Path::new("/run/runtap.sock"));
    assert_eq!((c.daemon.socket_mode, c.daemon.listen.as_str()), (0o600, "0.0.0.0:9000"));
    assert_eq!(c.runs.drain_timeout, Duration::from_millis(500));
    assert_eq!((c.runs.pty_cols, c.runs.pty_rows), (80, 24));
    assert_eq!(c.journal.retention_max_age, Duration::from_secs(86_400));
    assert_eq!(c.journal.retention_check_interval, Duration::from_secs(60));
    assert_eq!(c.stream.tokens.len(), 1);
    assert_eq!((c.stream.subscriber_queue_batches, c.stream.rate_burst), (7, 6));
    assert_eq!(c.stream.allowed_origins, ["https://ci.example"]);
    assert!(!format!("{c:?}").contains("0123456789abcdef"), "Debug must redact tokens");
}

#[test]
fn file_state_dir_moves_the_default_socket() {
    let env = env_of(&[]);
    let file = parse_file("[daemon]\nstate_dir = \"/srv/rt\"\n", None).unwrap();
    let config = Config::assemble(None, file, &env).unwrap();
    assert_eq!(config.daemon.socket, Path::new("/srv/rt/runtap.sock"));
}

#[test]
fn unknown_key_names_key_and_file() {
    let text = "[runs]\ngracee_period = \"1s\"\n";
    let msg = refused(text, "unknown key `runs.gracee_period` (line 2, column 1)");
    assert!(msg.contains("`grace_period`"), "lists the valid keys: {msg}");
    refused("[strem]\n", "unknown key `strem`");
}

#[test]
fn bad_values_name_the_key() {
    let msg = refused("[runs]\ngrace_period = \"ten\"\n", "runs.grace_period: invalid duration \"ten\": ");
    assert!(msg.contains("line 2"), "{msg}");
    for (text, want) in [
        ("[runs]\ngrace_period = 10", "runs.grace_period: invalid type: integer `10`, expected a duration"),
        ("[stream]\nmax_frame_bytes = \"big\"", "stream.max_frame_bytes: invalid type"),
        ("[daemon]\nsocket_mode = \"0689\"", "daemon.socket_mode: invalid mode"),
        ("[daemon]\nsocket_mode = 660", "daemon.socket_mode: invalid type: integer `660`, expected a string"),
        ("[runs\n", "TOML parse error at line 1"),
    ] {
        refused(text, want);
    }
}

#[test]
fn world_accessible_socket_mode_refused() {
    for mode in ["0666", "0604", "0661", "4660", "0060"] {
        refused(&format!("[daemon]\nsocket_mode = \"{mode}\""), "daemon.socket_mode: ");
    }
    for mode in ["0600", "0640", "660", "0o660"] {
        Config::from_toml_str(&format!("[daemon]\nsocket_mode = \"{mode}\""), None).unwrap();
    }
}

#[test]
fn validation_names_the_key() {
    for (text, want) in [
        ("[runs]\nmax_concurrent = 0", "runs.max_concurrent: must be at least 1 (got 0)"),
        ("[runs]\npty_rows = 0", "runs.pty_rows: "),
        ("[stream]\nmax_frame_bytes = 100", "stream.max_frame_bytes: must be at least 1024"),
        ("[stream]\nmax_frame_bytes = 16777217", "stream.max_frame_bytes: must be at most"),
        ("[stream]\nping_timeout = \"25s\"", "stream.ping_timeout: "),
        ("[stream]\nsubscriber_queue_bytes = 1024", "stream.subscriber_queue_bytes: "),
        ("[journal]\nfsync_interval = \"0s\"", "journal.fsync_interval: must be greater than zero"),
        ("[daemon]\nlisten = \"localhost\"", "daemon.listen: invalid socket address \"localhost\""),
        ("[daemon]\nlog_level = \"\"", "daemon.log_level: must not be empty"),
        ("[daemon]\nlog_level = \"a=b=c\"", "daemon.log_level: invalid filter"),
    ] {
        refused(text, want);
    }
    let msg = refused("[stream]\ntokens = [\"0123456789abcdef\", \"short\"]", "stream.tokens[1]: ");
    assert!(!msg.contains("short"), "tokens must not be echoed: {msg}");
    let msg = refused("[stream]\nread_only_tokens = [\"short ro\"]", "stream.read_only_tokens[0]: must be at least");
    assert!(!msg.contains("short ro"), "tokens must not be echoed: {msg}");
    let both = "[stream]\ntokens = [\"0123456789abcdef\"]\nread_only_tokens = [\"0123456789abcdef\"]";
    let msg = refused(both, "stream.read_only_tokens[0]: is also in stream.tokens");
    assert!(!msg.contains("0123456789abcdef"), "tokens must not be echoed: {msg}");
}

/// `cancel` on a restricted token defaults to true (what it was before the
/// key existed); read-only tokens parse.
#[test]
fn read_only_tokens_and_restricted_cancel() {
    let text = "[stream]\nread_only_tokens = [\"wall-dashboard-0123\"]\n\
        [[stream.restricted_tokens]]\ntoken = \"team-a-token-0123456\"\nrun_prefix = \"a-\"\n\
        [[stream.restricted_tokens]]\ntoken = \"team-b-token-0123456\"\nrun_prefix = \"b-\"\ncancel = false\n";
    let c = Config::from_toml_str(text, None).unwrap();
    assert_eq!(c.stream.read_only_tokens, vec!["wall-dashboard-0123".to_owned()]);
    let cancels: Vec<bool> = c.stream.restricted_tokens.iter().map(|t| t.cancel).collect();
    assert_eq!(cancels, vec![true, false]);
    assert!(!format!("{c:?}").contains("wall-dashboard"), "Debug must redact read-only tokens");
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[daemon]\nlisten = \"127.0.0.1:1000\"\nlog_level = \"warn\"\n").unwrap();
    let env = env_of(&[("RUNTAP_LISTEN", "127.0.0.1:2000"), ("RUNTAP_STATE_DIR", "/e"), ("RUNTAP_LOG", "")]);
    let mut overrides = Overrides { config: Some(path.clone()), ..Overrides::default() };
    let config = Config::load_with(&overrides, &env).unwrap();
    assert_eq!(config.path.as_deref(), Some(path.as_path()));
    assert_eq!(config.daemon.listen, "127.0.0.1:2000");
    assert_eq!(config.daemon.log_level, "warn", "empty env values are ignored");
    assert_eq!(config.daemon.socket, Path::new("/e/runtap.sock"));

    overrides.listen = Some("127.0.0.1:3000".into());
    overrides.state_dir = Some("/f".into());
    let config = Config::load_with(&overrides, &env).unwrap();
    assert_eq!(config.daemon.listen, "127.0.0.1:3000");
    assert_eq!(config.daemon.socket, Path::new("/f/runtap.sock"));
    overrides.socket = Some("/s.sock".into());
    assert_eq!(Config::load_with(&overrides, &env).unwrap().daemon.socket, Path::new("/s.sock"));
}

#[test]
fn missing_named_file_is_an_error() {
    let overrides = Overrides { config: Some("/nonexistent/runtap.toml".into()), ..Overrides::default() };
    let msg = Config::load_with(&overrides, env_of(&[])).unwrap_err().to_string();
    assert_eq!(msg, "config /nonexistent/runtap.toml: file not found");
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides { config: Some(dir.path().into()), ..Overrides::default() };
    let msg = Config::load_with(&overrides, env_of(&[])).unwrap_err().to_string();
    assert!(msg.contains(": read: ") && msg.contains("os error"), "{msg}");
}

#[test]
fn repo_config_toml_is_the_defaults() {
    let c = Config::from_toml_str(include_str!("../../config.toml"), Some(Path::new("config.toml"))).unwrap();
    let d = Config::default();
    assert_eq!((c.daemon, c.runs, c.journal, c.stream), (d.daemon, d.runs, d.journal, d.stream));
}

#[test]
fn auth_keys_parse_and_are_checked() {
    let c = Config::from_toml_str(
        "[auth]\njwt_hs256_secret_file = \"/s\"\njwt_public_keys = [\"/k.pem\"]\njwt_audience = \"runtap\"",
        None,
    )
    .unwrap();
    assert_eq!(c.auth.jwt_public_keys, vec![PathBuf::from("/k.pem")]);
    assert_eq!(c.auth.jwt_audience.as_deref(), Some("runtap"));
    refused("[auth]\njwt_issuer = \"x\"", "auth.jwt_issuer: has no effect without");
    refused("[auth]\njwt_public_keys = [\"\"]", "auth.jwt_public_keys[0]: must not be empty");
    refused("[auth]\njwt_hs256_secret = \"x\"", "unknown key `auth.jwt_hs256_secret`");
}

#[test]
fn upstream_url_is_a_string_or_a_list() {
    let one = Config::from_toml_str("[upstream]\nurl = \"ws://a:7878\"\ntoken_file = \"/t\"", None).unwrap();
    assert_eq!(one.upstream.url, ["ws://a:7878"]);
    let text = "[upstream]\nurl = [\"ws://a:7878\", \"wss://b.example:7878/\"]\ntoken_file = \"/t\"";
    let many = Config::from_toml_str(text, None).unwrap();
    assert_eq!(many.upstream.url, ["ws://a:7878", "wss://b.example:7878/"]);
    assert!(Config::default().upstream.url.is_empty(), "no forwarding by default");
}

#[test]
fn upstream_urls_are_each_checked() {
    refused("[upstream]\nurl = \"http://a:7878\"\ntoken_file = \"/t\"", "upstream.url: must be ws://");
    refused("[upstream]\nurl = [\"ws://a:1\", \"ws://\"]\ntoken_file = \"/t\"", "upstream.url[1]: must be ws://");
    refused(
        "[upstream]\nurl = [\"ws://a:1\", \"ws://a:1\"]\ntoken_file = \"/t\"",
        "upstream.url[1]: \"ws://a:1\" is listed twice",
    );
    refused("[upstream]\nurl = \"ws://u:secret@a:1\"\ntoken_file = \"/t\"", "upstream.url: must be ws://");
    refused("[upstream]\nurl = [\"ws://a:1\"]", "upstream.token_file: is required");
    refused("[upstream]\nurl = 7878", "upstream.url: expected a URL string or a list");
}

#[test]
fn upstream_flags_replace_the_files_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[upstream]\nurl = [\"ws://a:1\", \"ws://b:2\"]\ntoken_file = \"/t\"").unwrap();
    let mut o = Overrides { config: Some(path), ..Overrides::default() };
    assert_eq!(Config::load_with(&o, env_of(&[])).unwrap().upstream.url, ["ws://a:1", "ws://b:2"]);
    o.upstream = vec!["ws://c:3".into(), "ws://d:4".into()];
    assert_eq!(Config::load_with(&o, env_of(&[])).unwrap().upstream.url, ["ws://c:3", "ws://d:4"]);
}
