//! Origins for people: aligned `key: value` lines (`loopwarden who`) and
//! a table (`loopwarden conns`).

use std::{fmt::Write as _, time::SystemTime};

use serde_json::Value;

use crate::events::{Quoted, reshapes};

/// A field as text: strings as they are, `-` for none. A string with a
/// control character (a command line or file name the caller chose, with
/// a newline or an escape sequence in it) or one that changes how what
/// follows displays (a bidirectional override, a zero-width character) is
/// quoted with Rust's escapes, so it can neither forge a line of its own,
/// move the terminal's cursor nor show its text reversed; so is one
/// starting with a quote, which would read as quoted.
fn text(origin: &Value, field: &str) -> String {
    match &origin[field] {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.starts_with('"') || s.chars().any(reshapes) => {
            format!("{s:?}")
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table cell: quoted also when it has spaces, which would split it.
fn cell(origin: &Value, field: &str) -> String {
    match &origin[field] {
        Value::String(s) => Quoted(s).to_string(),
        _ => text(origin, field),
    }
}

/// `via` with how and when, or `-`.
fn via(origin: &Value) -> String {
    match (&origin["via"], &origin["via_how"], &origin["via_ago_ms"]) {
        (Value::String(via), Value::String(how), Value::Number(ms)) => {
            format!("{via} ({how} {ms} ms before)")
        }
        (Value::String(via), Value::String(how), _) => format!("{via} ({how})"),
        _ => "-".to_owned(),
    }
}

/// One origin as aligned `key: value` lines.
pub(super) fn describe(origin: &Value) -> String {
    let alive = if origin["alive"] == true {
        "running"
    } else {
        "exited"
    };
    let user = format!("{} (uid {})", text(origin, "user"), text(origin, "uid"));
    let mut rows = vec![
        ("client", text(origin, "client")),
        ("server", text(origin, "server")),
        ("pid", format!("{} ({alive})", text(origin, "pid"))),
        ("user", user),
        ("comm", text(origin, "comm")),
        ("exe", text(origin, "exe")),
        ("exe_name", text(origin, "exe_name")),
        ("cmdline", text(origin, "cmdline")),
        ("cgroup", text(origin, "cgroup")),
        ("verdict", text(origin, "verdict")),
        ("rule", text(origin, "rule")),
        ("via", via(origin)),
    ];
    if origin["script"].is_string() {
        rows.push(("script", text(origin, "script")));
    }
    rows.extend([
        ("connected_at", text(origin, "connected_at")),
        ("established_at", text(origin, "established_at")),
        ("netns", text(origin, "netns")),
        ("server_uid", text(origin, "server_uid")),
    ]);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{:<width$} {value}", format!("{key}:"));
    }
    out
}

/// Origins as a table, one line each.
pub(super) fn table(origins: &[Value]) -> String {
    let now = SystemTime::now();
    // Connections of several network namespaces (root's list) look alike
    // but for it: their namespace is a column then.
    let mut namespaces: Vec<u64> = origins.iter().filter_map(|o| o["netns"].as_u64()).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let netns_column = namespaces.len() > 1;
    let mut header = vec![
        "CLIENT", "SERVER", "PID", "USER", "EXE", "VERDICT", "RULE", "VIA", "AGE",
    ];
    if netns_column {
        header.insert(2, "NETNS");
    }
    let mut rows = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    for o in origins {
        let user = match &o["user"] {
            Value::String(_) => cell(o, "user"),
            _ => text(o, "uid"),
        };
        let via = match (&o["via"], &o["via_how"]) {
            (Value::String(via), Value::String(how)) => format!("{via}({how})"),
            _ => "-".to_owned(),
        };
        let mut row = vec![
            text(o, "client"),
            text(o, "server"),
            text(o, "pid"),
            user,
            cell(o, "exe_name"),
            text(o, "verdict"),
            cell(o, "rule"),
            via,
            age(o, now),
        ];
        if netns_column {
            row.insert(2, text(o, "netns"));
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long ago the connection was established, coarsely (`42s`, `5m`,
/// `3h`, `2d`).
fn age(origin: &Value, now: SystemTime) -> String {
    let Some(since) = origin["established_at"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
    else {
        return "-".to_owned();
    };
    let secs = now.duration_since(since).unwrap_or_default().as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn origins_print_as_lines_and_rows() {
        let origin = json!({
            "client": "127.0.0.1:53422", "server": "127.0.0.1:8080", "pid": 42, "uid": 1000,
            "user": "alice", "comm": "socat", "exe": null, "exe_name": "socat",
            "verdict": "audit", "rule": "relay", "via": "10.77.0.2:4444", "via_how": "accepted",
            "via_ago_ms": 3, "alive": false, "established_at": "2020-01-01T00:00:00.000Z",
        });
        let lines = describe(&origin);
        assert!(lines.contains("pid:            42 (exited)\n"), "{lines}");
        assert!(lines.contains("exe:            -\n"), "{lines}");
        assert!(lines.contains("via:            10.77.0.2:4444 (accepted 3 ms before)\n"));
        let table = table(&[origin]);
        let mut rows = table.lines();
        assert!(rows.next().unwrap().starts_with("CLIENT           SERVER"));
        let row: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
        assert_eq!(
            row[..8],
            [
                "127.0.0.1:53422",
                "127.0.0.1:8080",
                "42",
                "alice",
                "socat",
                "audit",
                "relay",
                "10.77.0.2:4444(accepted)"
            ]
        );
        assert!(row[8].ends_with('d'), "{row:?}");
    }

    /// Connections of one namespace: no NETNS column; of several (root's
    /// list): one, after SERVER.
    #[test]
    fn a_list_over_several_namespaces_names_each_rows_namespace() {
        let origin = |netns: u64| {
            json!({"client": "127.0.0.1:53422", "server": "127.0.0.1:8080", "pid": 42,
                   "user": "root", "exe_name": "curl", "verdict": "allow", "netns": netns})
        };
        let one = table(&[origin(7), origin(7)]);
        assert!(!one.contains("NETNS"), "{one}");
        let several = table(&[origin(7), origin(4026531840)]);
        let mut rows = several.lines();
        let header: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header[..4],
            ["CLIENT", "SERVER", "NETNS", "PID"],
            "{several}"
        );
        let netns: Vec<&str> = rows.map(|r| r.split_whitespace().nth(2).unwrap()).collect();
        assert_eq!(netns, ["7", "4026531840"], "{several}");
    }

    #[test]
    fn a_chosen_command_line_cannot_forge_lines_or_cells() {
        let origin = json!({
            "pid": 42, "uid": 0, "user": "root", "verdict": "would-deny",
            "cmdline": "socat\nverdict:        allow\x1b[2K",
            "exe_name": "my relay", "comm": "\"quoted\"",
            "established_at": "2020-01-01T00:00:00.000Z",
        });
        let lines = describe(&origin);
        assert!(
            lines.contains("cmdline:        \"socat\\nverdict:        allow\\u{1b}[2K\"\n"),
            "{lines}"
        );
        let verdicts = lines.lines().filter(|l| l.starts_with("verdict:"));
        assert_eq!(verdicts.count(), 1, "{lines}");
        assert!(lines.contains("verdict:        would-deny\n"), "{lines}");
        assert!(
            lines.contains("comm:           \"\\\"quoted\\\"\"\n"),
            "{lines}"
        );
        assert!(lines.contains("exe_name:       my relay\n"), "{lines}");
        let table = table(&[origin]);
        let row = table.lines().nth(1).unwrap();
        assert!(row.contains("\"my relay\""), "{row}");
    }

    #[test]
    fn a_chosen_name_cannot_show_its_text_reversed_or_hidden() {
        let origin = json!({
            "pid": 42, "verdict": "would-deny",
            "exe_name": "socat\u{202e}yaler",
            "comm": "cu\u{200b}rl",
            "cmdline": "a\u{2028}b\u{61c}",
            "exe": "/usr/bin/caf\u{e9}",
        });
        let lines = describe(&origin);
        for expected in [
            "exe_name:       \"socat\\u{202e}yaler\"\n",
            "comm:           \"cu\\u{200b}rl\"\n",
            "cmdline:        \"a\\u{2028}b\\u{61c}\"\n",
            // A letter with its accent is no mark of its own: as it is.
            "exe:            /usr/bin/caf\u{e9}\n",
        ] {
            assert!(lines.contains(expected), "{expected:?} in {lines}");
        }
    }
}
