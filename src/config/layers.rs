//! The layers of the config: the TOML file, the environment, the flags.
//! Only the `[daemon]` section has environment and flag overrides; the
//! layering of those keys happens in `DaemonLayer` so that the socket can
//! follow the final state dir.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{Deserializer, Error as _, Visitor};
use toml::de::{DeTable, DeValue};

use super::{
    AuthConfig, ConfigError, DEFAULT_LISTEN, DEFAULT_LOG_LEVEL, DEFAULT_SOCKET_MODE, DaemonConfig, GatewayConfig,
    JournalConfig, Overrides, RunsConfig, StreamConfig, UpstreamConfig,
};

/// The file's shape. Sections other than `[daemon]` need no layering and parse straight in.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) daemon: DaemonLayer,
    pub(super) runs: RunsConfig,
    pub(super) journal: JournalConfig,
    pub(super) stream: StreamConfig,
    pub(super) upstream: UpstreamConfig,
    pub(super) gateway: GatewayConfig,
    pub(super) auth: AuthConfig,
}

/// `[daemon]` as set so far by file, environment and flags; `None` means "not set by anyone",
/// which is how [`resolve`](Self::resolve) knows the socket should follow the final state dir.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct DaemonLayer {
    pub(super) state_dir: Option<PathBuf>,
    pub(super) socket: Option<PathBuf>,
    #[serde(deserialize_with = "de_octal")]
    pub(super) socket_mode: Option<u32>,
    pub(super) listen: Option<String>,
    pub(super) log_level: Option<String>,
}

impl DaemonLayer {
    /// The environment layer. Empty values are ignored, so `RUNTAP_LISTEN=` is not an error.
    pub(super) fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        self.state_dir = get("RUNTAP_STATE_DIR").map(PathBuf::from).or(self.state_dir.take());
        self.socket = get("RUNTAP_SOCKET").map(PathBuf::from).or(self.socket.take());
        self.listen = get("RUNTAP_LISTEN").or(self.listen.take());
        self.log_level = get("RUNTAP_LOG").or(self.log_level.take());
    }

    pub(super) fn apply_overrides(&mut self, o: &Overrides) {
        self.state_dir = o.state_dir.clone().or(self.state_dir.take());
        self.socket = o.socket.clone().or(self.socket.take());
        self.listen = o.listen.clone().or(self.listen.take());
    }

    /// Fills what no layer set; the XDG lookups go through `env` so tests stay hermetic.
    pub(super) fn resolve(self, env: &impl Fn(&str) -> Option<String>) -> DaemonConfig {
        let state_dir = self.state_dir.unwrap_or_else(|| state_dir_from(env));
        DaemonConfig {
            socket: self.socket.unwrap_or_else(|| socket_from(env, &state_dir)),
            state_dir,
            socket_mode: self.socket_mode.unwrap_or(DEFAULT_SOCKET_MODE),
            listen: self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
            log_level: self.log_level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
        }
    }
}

/// `$XDG_STATE_HOME/runtap` if that is set to an absolute path (XDG says to ignore relative
/// ones), else `./runtap-data`, made absolute against the current directory when possible.
pub fn default_state_dir() -> PathBuf {
    state_dir_from(&process_env)
}

/// `$XDG_RUNTIME_DIR/runtap.sock` if that is set and non-empty (tmpfs, per-user, cleaned at
/// logout), else `STATE_DIR/runtap.sock`.
pub fn default_socket(state_dir: &Path) -> PathBuf {
    socket_from(&process_env, state_dir)
}

pub(super) fn state_dir_from(env: &impl Fn(&str) -> Option<String>) -> PathBuf {
    match env("XDG_STATE_HOME").map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() => xdg.join("runtap"),
        _ => std::env::current_dir().map_or_else(|_| PathBuf::from("runtap-data"), |cwd| cwd.join("runtap-data")),
    }
}

pub(super) fn socket_from(env: &impl Fn(&str) -> Option<String>, state_dir: &Path) -> PathBuf {
    match env("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("runtap.sock"),
        None => state_dir.join("runtap.sock"),
    }
}

pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Parses the file, turning toml's span-based errors into ones that name the dotted key.
pub(super) fn parse_file(text: &str, path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let err = match toml::from_str(text) {
        Ok(file) => return Ok(file),
        Err(err) => err,
    };
    let file = path.map(Path::to_path_buf);
    // toml keeps the failing key private, so locate it by span in a spanned parse of the text.
    let (Some(span), Ok(doc)) = (err.span(), DeTable::parse(text)) else {
        return Err(ConfigError::Syntax { file, reason: err.to_string().trim_end().to_owned() });
    };
    let key = key_at(doc.get_ref(), span.start).join(".");
    let line = text[..span.start].matches('\n').count() + 1;
    let column = text[..span.start].rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let message = err.message();
    if let Some((_, expected)) = message.strip_prefix("unknown field").and_then(|m| m.split_once("expected one of ")) {
        return Err(ConfigError::UnknownKey { file, key, line, column, expected: expected.to_owned() });
    }
    Err(ConfigError::Invalid { file, key, reason: format!("{message} (line {line}, column {column})") })
}

/// The dotted path of the innermost key whose key or value span contains `pos`.
fn key_at(table: &DeTable<'_>, pos: usize) -> Vec<String> {
    for (key, value) in table.iter() {
        if let DeValue::Table(inner) = value.get_ref() {
            let mut path = key_at(inner, pos);
            if !path.is_empty() {
                path.insert(0, key.get_ref().to_string());
                return path;
            }
        }
        if key.span().contains(&pos) || value.span().contains(&pos) {
            return vec![key.get_ref().to_string()];
        }
    }
    Vec::new()
}

/// A humantime duration ("250ms", "10s", "7d"); the message keeps humantime's reason.
pub(super) fn de_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = de.deserialize_str(StrVisitor("a duration string like \"10s\""))?;
    humantime::parse_duration(&text).map_err(|e| D::Error::custom(format!("invalid duration {text:?}: {e}")))
}

/// A string, or a list of strings (`url = "ws://a"` or `url = ["ws://a", "ws://b"]`).
pub(super) fn de_string_or_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(de) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(D::Error::custom("expected a URL string or a list of URL strings")),
    }
}

/// A string of octal digits ("0660"). Strings, not integers, because TOML reads 660 as decimal.
fn de_octal<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u32>, D::Error> {
    let text = de.deserialize_str(StrVisitor("a string of octal digits like \"0660\""))?;
    let digits = text.strip_prefix("0o").unwrap_or(&text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if digits.len() <= 4 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(mode)),
        _ => Err(D::Error::custom(format!("invalid mode {text:?}: expected octal digits like \"0660\""))),
    }
}

/// Accepts only a string, and says what kind of string in the "invalid type" message.
struct StrVisitor(&'static str);

impl Visitor<'_> for StrVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}
