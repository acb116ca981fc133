//! Logging: `tracing` everywhere, written to journald natively when stderr
//! is connected to the journal, else as human-readable lines on stderr.
//!
//! Under systemd (`JOURNAL_STREAM` matches stderr) each event goes through
//! systemd-journal-logger, with its structured fields as journal fields:
//! `run_id` becomes `RUN_ID=`, so `journalctl RUN_ID=build-42` works. The
//! level comes from `RUST_LOG` if set, else the config, and can be changed
//! on reload.
//!
//! Two rules hold at every level, because logs are read by people and
//! parsed by tools:
//! - **No field can forge a line.** Clients choose some of what is logged
//!   (a cancel reason, a program name, a malformed message); every field
//!   and message is written with its control characters escaped (`\n`,
//!   `\x1b`, ...), so nothing a client sends starts a line of its own.
//! - **No secret is logged.** Tokens never go into fields; tungstenite,
//!   which logs every message it receives (auth messages too) at trace
//!   level, is held at debug whatever the filter says.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// Targets that log message contents (and so secrets) below this level.
const CAPPED_TARGETS: [&str; 2] = ["tungstenite=debug", "tokio_tungstenite=debug"];

/// `directives` with the secret-bearing targets capped.
fn filter(directives: &str) -> Result<EnvFilter, String> {
    let mut filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
    for cap in CAPPED_TARGETS {
        filter = filter.add_directive(cap.parse().map_err(|e: tracing_subscriber::filter::ParseError| e.to_string())?);
    }
    Ok(filter)
}

/// Changes the level of the installed logger.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// Set when `RUST_LOG` chose the level: it wins over the config, on reload too.
    from_env: bool,
}

impl LogHandle {
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        if self.from_env {
            return Ok(());
        }
        self.filter.reload(filter(level)?).map_err(|e| e.to_string())
    }
}

/// Installs the global logger. Call once, before anything logs.
pub fn init(level: &str) -> LogHandle {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (filter, from_env) = match from_env.as_deref().map(filter) {
        Some(Ok(f)) => (f, true),
        _ => (filter(level).or_else(|_| filter("info")).unwrap_or_else(|_| EnvFilter::new("info")), false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let journal = systemd_journal_logger::connected_to_journal()
        .then(|| systemd_journal_logger::JournalLog::new().ok())
        .flatten();
    let registry = tracing_subscriber::registry().with(filter);
    match journal {
        Some(journal) => registry.with(JournalLayer { journal }).init(),
        None => {
            use std::io::IsTerminal as _;
            let fmt = tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .fmt_fields(EscapedFields)
                .with_writer(std::io::stderr);
            registry.with(fmt).init();
        }
    }
    LogHandle { filter: handle, from_env }
}

/// Hands each tracing event to journald as a `log` record whose key-values
/// become journal fields.
struct JournalLayer {
    journal: systemd_journal_logger::JournalLog,
}

impl<S: tracing::Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        use log::Log as _;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => log::Level::Error,
            tracing::Level::WARN => log::Level::Warn,
            tracing::Level::INFO => log::Level::Info,
            tracing::Level::DEBUG => log::Level::Debug,
            tracing::Level::TRACE => log::Level::Trace,
        };
        let kvs: Vec<(&str, &str)> = fields.pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.journal.log(
            &log::Record::builder()
                .args(format_args!("{}", fields.message))
                .level(level)
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .key_values(&kvs)
                .build(),
        );
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            push_escaped(&mut self.message, value);
        } else {
            let mut v = String::new();
            push_escaped(&mut v, value);
            self.pairs.push((field.name(), v));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Appends `s` with every character that could end a line, or drive a
/// terminal, escaped.
fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// The stderr format's fields (`message key=value ...`), escaped.
struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor { writer, first: true, result: Ok(()) };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let mut text = String::with_capacity(value.len() + field.name().len() + 2);
        if !self.first {
            text.push(' ');
        }
        self.first = false;
        if field.name() != "message" {
            text.push_str(field.name());
            text.push('=');
        }
        push_escaped(&mut text, value);
        self.result = self.writer.write_str(&text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_start_a_line() {
        let mut out = String::new();
        push_escaped(&mut out, "a\nb\r\u{1b}[31mc\u{2028}d\te");
        assert_eq!(out, "a\\nb\\r\\u{1b}[31mc\\u{2028}d\te");
    }
}
