//! How long an audit line may get. A process chooses its executable's
//! path, its command line and (through systemd or a container runtime,
//! often) its cgroup's name, and escaping can make each byte of them six
//! characters or more: uncut, a hostile process's line could pass the
//! lengths at which journald (`LineMax`, 48 KiB) and container runtimes
//! (16 KiB) split lines, leaving a JSON line no parser takes, or a human
//! line's tail, of the attacker's choosing, on a line of its own. So each
//! such field is cut to a budget of *escaped* characters, ` …` marking the
//! cut, and the line stays under 16 KiB whatever the process names.

use std::borrow::Cow;

/// Escaped characters an executable path (or the parent's), a cgroup path
/// or a script may take in a line.
pub const PATH_BUDGET: usize = 1024;
/// Escaped characters a command line may take in a line.
pub const CMDLINE_BUDGET: usize = 4096;

/// The most characters one byte of a value can take escaped.
const MAX_ESCAPED: usize = 10;

/// What marks a cut value.
const MARK: &str = " …";

/// The most characters `c` takes in a line: its Rust debug escape (the
/// human format's quoting; `\u{e0001}` at worst) or its JSON escape
/// (`\u0001` for a control below U+0020, `\udb40\udc01` for one the line
/// escapes past the BMP), whichever is longer.
fn escaped_len(c: char) -> usize {
    let json = if u32::from(c) < 0x20 {
        6
    } else if super::json_leaves_raw(c) {
        6 * c.len_utf16()
    } else {
        c.len_utf8()
    };
    c.escape_debug().len().max(json)
}

/// `value`, or as much of it as fits `budget` escaped characters with
/// [`MARK`] after it.
pub fn cap(value: &str, budget: usize) -> Cow<'_, str> {
    // No character escapes to more than ten (`\u{10ffff}`), nor is it
    // shorter than a byte: most values fit without a look at each.
    if value.len().saturating_mul(MAX_ESCAPED) <= budget {
        return Cow::Borrowed(value);
    }
    // Printable ASCII (a long command line, mostly) takes one character a
    // byte, a quote or backslash two: counted by bytes, at memory speed.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        let quoted = value.bytes().filter(|&b| b == b'"' || b == b'\\').count();
        if value.len() + quoted <= budget {
            return Cow::Borrowed(value);
        }
    }
    let mut used = 0;
    let mut fits_whole = true;
    // The end of the longest prefix that leaves room for the mark.
    let mut end = 0;
    for (at, c) in value.char_indices() {
        used += escaped_len(c);
        if used + MARK.len() <= budget {
            end = at + c.len_utf8();
        }
        if used > budget {
            fits_whole = false;
            break;
        }
    }
    if fits_whole {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!("{}{MARK}", &value[..end]))
    }
}

/// [`cap`] of an owned value, which it keeps when it fits.
pub fn cap_owned(value: String, budget: usize) -> String {
    match cap(&value, budget) {
        Cow::Borrowed(_) => value,
        Cow::Owned(cut) => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_fits_is_kept_whole() {
        assert!(matches!(cap("/usr/bin/socat", 64), Cow::Borrowed(_)));
        let exact = "a".repeat(64);
        assert!(matches!(cap(&exact, 64), Cow::Borrowed(_)));
    }

    #[test]
    fn a_long_value_is_cut_with_a_mark_within_its_budget() {
        let long = "a".repeat(100);
        let cut = cap(&long, 64);
        assert!(cut.ends_with(MARK), "{cut}");
        assert!(cut.len() <= 64, "{}", cut.len());
        assert!(cut.starts_with(&"a".repeat(60)));
    }

    #[test]
    fn characters_count_as_escaped() {
        // Each DEL escapes to `\u{7f}` (6), each U+0001 to `\u0001` in JSON.
        for c in ['\u{7f}', '\u{1}'] {
            let hostile: String = std::iter::repeat_n(c, 1000).collect();
            let cut = cap(&hostile, 600);
            let escaped = format!("{cut:?}");
            let json = serde_json::to_string(&cut).expect("a string");
            assert!(escaped.len() <= 600 + 2, "{}", escaped.len());
            assert!(json.len() <= 600 + 2, "{}", json.len());
            assert!(cut.ends_with(MARK));
        }
    }

    #[test]
    fn no_character_escapes_past_the_fast_paths_bound() {
        for c in [
            '\u{0}',
            '\u{7f}',
            '\u{85}',
            '\u{2028}',
            '\u{e0001}',
            '\u{10ffff}',
            'é',
        ] {
            assert!(escaped_len(c) <= MAX_ESCAPED * c.len_utf8(), "{c:?}");
        }
    }

    #[test]
    fn printable_ascii_counts_a_quote_or_backslash_twice() {
        let quotes = format!("{}\"\\", "a".repeat(60));
        assert!(matches!(cap(&quotes, 64), Cow::Borrowed(_)));
        assert!(matches!(cap(&quotes, 63), Cow::Owned(_)));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let wide = "é".repeat(100);
        let cut = cap(&wide, 51);
        assert!(cut.ends_with(MARK));
        assert!(cut.trim_end_matches(MARK).chars().all(|c| c == 'é'));
    }
}
