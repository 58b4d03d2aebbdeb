//! The Prometheus text exposition format, version 0.0.4: `# HELP` and
//! `# TYPE` once per family, before its samples; label values escaped
//! (`\\`, `\"`, `\n`), HELP text escaped (`\\`, `\n`).
//!
//! <https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>

use std::fmt::Write as _;

/// The `Content-Type` of what [`Exposition`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A page of metric families being written.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its HELP and TYPE lines. Its samples follow with
    /// [`Exposition::sample`], before the next family starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = write!(self.text, "# HELP {name} ");
        for c in help.chars() {
            match c {
                '\\' => self.text.push_str("\\\\"),
                '\n' => self.text.push_str("\\n"),
                c => self.text.push(c),
            }
        }
        let _ = writeln!(self.text, "\n# TYPE {name} {kind}");
    }

    /// One sample of the family started last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.text.push_str("\\\\"),
                        '"' => self.text.push_str("\\\""),
                        '\n' => self.text.push_str("\\n"),
                        c => self.text.push(c),
                    }
                }
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaped_labels() {
        let mut page = Exposition::default();
        page.family(
            "lw_x_total",
            Kind::Counter,
            "Counts \\ things\nacross lines.",
        );
        page.sample("lw_x_total", &[("rule", "a\"b\\c\nd"), ("port", "80")], 7);
        page.sample("lw_x_total", &[], 0);
        page.single("lw_up", Kind::Gauge, "Up.", 1);
        assert_eq!(
            page.into_text(),
            "# HELP lw_x_total Counts \\\\ things\\nacross lines.\n\
             # TYPE lw_x_total counter\n\
             lw_x_total{rule=\"a\\\"b\\\\c\\nd\",port=\"80\"} 7\n\
             lw_x_total 0\n\
             # HELP lw_up Up.\n\
             # TYPE lw_up gauge\n\
             lw_up 1\n"
        );
    }
}
