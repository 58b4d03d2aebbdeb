//! Parsing and validation tests: every bad input names file, line and problem.

use std::path::PathBuf;

use loopwarden_common::MAX_RULES;

use super::{lines::LineIndex, *};
use crate::catalog::CATALOG;

mod basics;
mod egress;
mod files;
mod rules;
mod tables;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_named(text, "test.toml")
}

/// Parses `text`, expecting an error whose message names `test.toml` at
/// `line` and contains `phrase`.
fn expect_error(text: &str, line: usize, phrase: &str) -> ConfigError {
    let err = match parse(text) {
        Ok(config) => panic!("expected an error containing {phrase:?}, parsed {config:?}"),
        Err(err) => err,
    };
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("test.toml:{line}:")),
        "expected line {line}: {message}"
    );
    assert!(
        message.contains(phrase),
        "expected {phrase:?} in: {message}"
    );
    err
}

fn rule(body: &str) -> String {
    format!("mode = \"audit\"\n\n[[rule]]\nname = \"r\"\naction = \"deny\"\n{body}\n")
}

/// Writes `contents` to `name` in `dir`; its path.
fn write(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn rules(n: usize) -> String {
    (0..n)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\nuid = {i}\n"))
        .collect()
}
