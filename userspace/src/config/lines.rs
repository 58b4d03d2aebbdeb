//! Positions in the policy file: byte offsets to line and column, the
//! `file:line:column` prefix of every message, and what the parser was
//! looking at when it did not say.

use std::fmt;

use super::Location;

/// `file:line:column` (or just `file`) in messages.
pub(super) struct Position<'a>(pub(super) &'a str, pub(super) Option<&'a Location>);

impl fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(at) => write!(f, "{}:{at}", self.0),
            None => f.write_str(self.0),
        }
    }
}

/// Byte offsets to line and column.
pub(super) struct LineIndex<'a> {
    text: &'a str,
    /// Offset of the first byte of each line.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// What the parser was looking at, for messages that do not say: the key
    /// of a `key = value` line when `at` is in the value, or the header of a
    /// table.
    pub(super) fn context(&self, at: Location) -> Option<String> {
        let start = *self.starts.get(at.line.checked_sub(1)?)?;
        let line = self.text[start..].lines().next()?;
        let before: String = line.chars().take(at.column - 1).collect();
        if let Some((key, _)) = before.split_once('=') {
            let key = key.trim();
            return (!key.is_empty()).then(|| format!("`{key}`"));
        }
        let line = line.trim();
        line.starts_with('[').then(|| format!("in `{line}`"))
    }

    pub(super) fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line.saturating_sub(1)];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Location { line, column }
    }
}
