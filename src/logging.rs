//! Logging: `tracing` everywhere, written to journald natively when stderr
//! is connected to the journal, else as human-readable lines on stderr.
//!
//! Under systemd (`JOURNAL_STREAM` matches stderr) each event goes through
//! systemd-journal-logger, with its structured fields as journal fields:
//! `run_id` becomes `RUN_ID=`, so `journalctl RUN_ID=build-42` works. The
//! level comes from `RUST_LOG` if set, else the config, and can be changed
//! on reload.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

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
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global logger. Call once, before anything logs.
pub fn init(level: &str) -> LogHandle {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")), false),
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
            self.message.push_str(value);
        } else {
            self.pairs.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.pairs.push((field.name(), format!("{value:?}")));
        }
    }
}
