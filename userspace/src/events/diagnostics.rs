//! The daemon's diagnostics on stderr (`tracing` events): the usual
//! `time LEVEL target: message key=value` for people, or with
//! `--log-format json` one JSON object per line, versioned and with the
//! host name like the audit lines (`v`, `host`, `time`, `level`, `target`,
//! `message`, then the event's own fields). Under systemd each line starts
//! with its syslog priority (see [`super::output`]): error `<3>`, warning
//! `<4>`, info `<6>`, debug and trace `<7>`.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{Format, Writer},
    },
    registry::LookupSpan,
};

use super::{
    LogFormat, Time,
    output::{self, priority},
};

/// The event formatter `main` installs.
pub struct Diagnostics {
    format: LogFormat,
    /// Whether stderr is the journal's.
    journal: bool,
    human: Format,
}

impl Diagnostics {
    pub fn new(format: LogFormat) -> Self {
        Self {
            format,
            journal: output::journal().stderr,
            human: Format::default(),
        }
    }
}

/// The syslog priority of a `tracing` level.
pub fn level_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => priority::ERR,
        Level::WARN => priority::WARNING,
        Level::INFO => priority::INFO,
        _ => priority::DEBUG,
    }
}

impl<S, N> FormatEvent<S, N> for Diagnostics
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if self.journal {
            write!(writer, "<{}>", level_priority(meta.level()))?;
        }
        match self.format {
            LogFormat::Human => self.human.format_event(ctx, writer, event),
            LogFormat::Json => {
                let mut fields = Fields(Map::new());
                event.record(&mut fields);
                let mut fields = fields.0;
                let host = output::host();
                let line = Line {
                    v: output::JSON_VERSION,
                    host: &host,
                    time: Time(std::time::SystemTime::now()).to_string(),
                    level: meta.level().as_str().to_ascii_lowercase(),
                    target: meta.target(),
                    message: fields.remove("message").unwrap_or(Value::Null),
                    fields,
                };
                let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
                writeln!(writer, "{text}")
            }
        }
    }
}

/// One JSON diagnostic line.
#[derive(Serialize)]
struct Line<'a> {
    v: u32,
    host: &'a str,
    time: String,
    level: String,
    target: &'a str,
    message: Value,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

/// An event's fields as JSON values.
struct Fields(Map<String, Value>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}
