//! Plain words for the TOML parser's messages: the kinds of value serde
//! names by their Rust types, the words a key takes where serde says only
//! "string or table", the key a misspelt one most likely is, and a
//! top-level key written under a `[table]` header.

/// Keys that belong at the top of the file, before any `[table]`.
const TOP_LEVEL: [&str; 4] = ["mode", "deny_errno", "catalog", "log_allowed"];

/// What serde calls a kind of value, and what an operator would.
const KINDS: [(&str, &str); 6] = [
    ("expected u8", "expected a whole number from 0 to 255"),
    ("expected u16", "expected a whole number from 0 to 65535"),
    (
        "expected u32",
        "expected a whole number from 0 to 4294967295",
    ),
    ("expected u64", "expected a whole number from 0 up"),
    (
        "expected i64",
        "expected a whole number (no quotes, no unit)",
    ),
    ("expected usize", "expected a whole number from 0 up"),
];

/// The words `key` takes, where the parser says only that it wanted
/// "string or table" (an enum given a number or a list).
fn words(key: &str) -> Option<&'static str> {
    Some(match key {
        "mode" => "\"audit\" or \"enforce\"",
        "action" => "\"deny\", \"audit\" or \"allow\" (an egress rule: \"deny\" or \"audit\")",
        "deny_errno" => "\"ECONNREFUSED\" or \"EPERM\"",
        "relayed" => "\"NO-USER\", \"HIDDEN-USER\" or \"UNKNOWN-ERROR\"",
        _ => return None,
    })
}

/// `message` (the parser's, for the value of `key` if one is known) in
/// an operator's words.
pub(super) fn humanize(message: &str, key: Option<&str>) -> String {
    let mut out = message.to_owned();
    for (serde, plain) in KINDS {
        // Only where a kind ends the message or a clause: not inside a
        // value quoted in it (`mode = "expected u8"`).
        for end in [",", ";"] {
            out = out.replace(&format!("{serde}{end}"), &format!("{plain}{end}"));
        }
        if out.ends_with(serde) {
            out.replace_range(out.len() - serde.len().., plain);
        }
    }
    // A bare word where a string goes (`mode = audit`).
    if out.starts_with("invalid string") || out.contains("invalid string;") {
        out.push_str(" (a word is a string in TOML: quote it, as in mode = \"audit\")");
    }
    if out.contains("wanted string or table") {
        let wanted = match key.and_then(words) {
            Some(words) => format!("wanted one of {words}, in quotes"),
            None => "wanted a word in quotes".to_owned(),
        };
        out = out.replace("wanted string or table", &wanted);
    }
    if let Some(unknown) = between(&out, "unknown field `", "`").map(str::to_owned) {
        let expected = expected_names(&out);
        if TOP_LEVEL.contains(&unknown.as_str()) && !expected.contains(&unknown.as_str()) {
            out.push_str(&format!(
                " (`{unknown}` is a top-level key: write it above the first [table] header; \
                 TOML puts every key after a header into that table)"
            ));
        } else if let Some(near) = nearest(&unknown, &expected) {
            out.push_str(&format!(" (did you mean `{near}`?)"));
        }
    }
    out
}

/// The text of `s` between the first `open` and the next `close`.
fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let rest = &s[s.find(open)? + open.len()..];
    Some(&rest[..rest.find(close)?])
}

/// The names in backticks after "expected" in a parser message.
fn expected_names(message: &str) -> Vec<&str> {
    let Some(at) = message.find("expected") else {
        return Vec::new();
    };
    message[at..].split('`').skip(1).step_by(2).collect()
}

/// The one of `names` within two edits of `word` (and closer than half its
/// length), the nearest first.
fn nearest<'a>(word: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|name| (strsim::levenshtein(word, name), *name))
        .filter(|&(d, _)| d <= 2 && d * 2 < word.len())
        .min()
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_kinds_are_said_in_words() {
        assert_eq!(
            humanize("invalid value: integer `-1`, expected u32", Some("uid")),
            "invalid value: integer `-1`, expected a whole number from 0 to 4294967295"
        );
        assert_eq!(
            humanize(
                "invalid type: string \"60s\", expected i64",
                Some("window_ms")
            ),
            "invalid type: string \"60s\", expected a whole number (no quotes, no unit)"
        );
        assert_eq!(
            humanize("wanted string or table", Some("mode")),
            "wanted one of \"audit\" or \"enforce\", in quotes"
        );
        assert_eq!(
            humanize("wanted string or table", None),
            "wanted a word in quotes"
        );
        assert!(
            humanize("invalid string; expected `\"`, `'`", Some("mode"))
                .ends_with("(a word is a string in TOML: quote it, as in mode = \"audit\")")
        );
    }

    #[test]
    fn unknown_keys_get_the_likely_one_or_where_it_belongs() {
        let misspelt = humanize(
            "unknown field `protekt`, expected one of `mode`, `protect`, `relay`",
            None,
        );
        assert!(
            misspelt.ends_with("(did you mean `protect`?)"),
            "{misspelt}"
        );
        let misplaced = humanize(
            "unknown field `mode`, expected one of `ports`, `netns`, `host_addresses`",
            None,
        );
        assert!(
            misplaced.contains("`mode` is a top-level key: write it above the first [table]"),
            "{misplaced}"
        );
        let quoted = humanize(
            "unknown variant `expected u8`, expected `audit` or `enforce`",
            None,
        );
        assert_eq!(
            quoted,
            "unknown variant `expected u8`, expected `audit` or `enforce`"
        );
        let far = humanize("unknown field `xyz`, expected `ports` or `netns`", None);
        assert_eq!(far, "unknown field `xyz`, expected `ports` or `netns`");
    }
}
