//! How browsers are judged per port: `[browsers]` compiled into the verdict
//! a browser-class rule gets at each port (`LW_BROWSER_PORTS`, two bits per
//! port, the mode already applied).

use loopwarden_common::{BROWSER_PORT_WORDS, browser_slot, browser_verdict, verdict};

use super::{Action, Mode};
use crate::config::{Browsers, PortRange};

/// The verdict of every port for a browser-class rule, and the table it
/// came from (for the summary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserPorts {
    /// The treatment of ports no list names.
    pub action: Action,
    /// The listed ports by treatment: deny, audit, allow.
    pub listed: [(Action, Vec<PortRange>); 3],
    /// Generation 0's `LW_BROWSER_PORTS` entries.
    pub words: Box<[u64; BROWSER_PORT_WORDS as usize]>,
}

/// The verdict a treatment gives in `mode`.
pub fn verdict_of(action: Action, mode: Mode) -> u8 {
    match (action, mode) {
        (Action::Deny, Mode::Enforce) => verdict::DENY,
        (Action::Deny, Mode::Audit) => verdict::WOULD_DENY,
        (Action::Audit, _) => verdict::AUDIT,
        (Action::Allow, _) => verdict::ALLOW,
    }
}

impl BrowserPorts {
    pub fn compile(browsers: &Browsers, mode: Mode) -> Self {
        // Two bits per port: the default's verdict repeated over each word.
        let fill = u64::from(verdict_of(browsers.action, mode)) * 0x5555_5555_5555_5555;
        let mut words = Box::new([fill; BROWSER_PORT_WORDS as usize]);
        let listed = browsers.lists().map(|(action, ranges)| {
            let v = u64::from(verdict_of(action, mode));
            for range in ranges {
                for port in range.value.first..=range.value.last {
                    let (index, shift) = browser_slot(0, port);
                    let word = &mut words[index as usize];
                    *word = *word & !(3 << shift) | v << shift;
                }
            }
            (action, ranges.iter().map(|r| r.value).collect())
        });
        Self {
            action: browsers.action,
            listed,
            words,
        }
    }

    /// The verdict a browser-class rule gets at `port`.
    pub fn verdict(&self, port: u16) -> u8 {
        let (index, shift) = browser_slot(0, port);
        browser_verdict(self.words[index as usize], shift)
    }
}

#[cfg(test)]
mod tests {
    use loopwarden_common::verdict;

    use super::super::{
        Action, ProcessIdentity,
        tests::{compile_ok, host, key},
    };

    const POLICY: &str = r#"
mode = "enforce"
[protect]
ports = [3000, 8000, 11434, "9000-9100"]
[browsers]
action = "audit"
deny = [11434, "9000-9099"]
allow = [3000]
exe_name = ["slack"]
exe = ["/usr/bin/tmux"]
[[rule]]
name = "mine"
action = "allow"
exe_name = "chromium"
uid = 1000
"#;

    fn named(name: &str, uid: u32) -> ProcessIdentity {
        ProcessIdentity {
            exe_name: name.as_bytes().to_vec(),
            uid,
            ..ProcessIdentity::default()
        }
    }

    #[test]
    fn browser_rules_and_their_verdicts_by_port() {
        let policy = compile_ok(POLICY, &host());
        let s = &policy.settings;
        let rule = |name: &str| {
            let i = policy.rules.iter().position(|r| r.name == name);
            i.unwrap_or_else(|| panic!("no rule {name}"))
        };
        // The user's rule, then [browsers]' two (names, paths), then the
        // catalog, its browsers last.
        assert_eq!(policy.rules[0].name, "mine");
        assert_eq!(
            (rule("browsers"), policy.rules[2].name.as_str()),
            (1, "browsers")
        );
        assert_eq!(
            policy.rules.last().map(|r| r.name.as_str()),
            Some("catalog:electron")
        );
        let browser_bits: Vec<usize> = (0..64).filter(|b| s.browser >> b & 1 == 1).collect();
        assert_eq!(
            browser_bits,
            [
                1,
                2,
                rule("catalog:chromium"),
                rule("catalog:firefox"),
                rule("catalog:electron")
            ]
        );
        assert!(
            policy
                .rules
                .iter()
                .enumerate()
                .all(|(i, r)| r.browser == (s.browser >> i & 1 == 1))
        );
        // Their action is the unlisted ports' treatment; no deny/audit bit.
        assert_eq!(policy.rules[rule("catalog:chromium")].action, Action::Audit);
        assert_eq!(s.browser & (s.deny | s.audit), 0);
        // The port's treatment alone judges a browser: never the relay verdict.
        assert_eq!(s.browser & s.exempt, s.browser);
        assert_eq!(policy.exe.get(&key(30)), Some(&(1 << 2)));

        let b = &policy.browsers;
        assert_eq!(b.verdict(11434), verdict::DENY);
        assert_eq!(b.verdict(9000), verdict::DENY);
        assert_eq!(b.verdict(9099), verdict::DENY);
        assert_eq!(b.verdict(9100), verdict::AUDIT);
        assert_eq!(b.verdict(3000), verdict::ALLOW);
        assert_eq!(b.verdict(8000), verdict::AUDIT);
        assert_eq!(b.verdict(1), verdict::AUDIT);
        assert_eq!(b.verdict(65535), verdict::AUDIT);

        // The kernel's judgement, mirrored: a browser is refused on the
        // API port only; a tunnel stays a tunnel; the user's own allow
        // rule still wins as the first match.
        for name in ["chromium", "chrome", "firefox-esr", "slack"] {
            assert!(policy.denial(&named(name, 0), 11434, 0).is_some(), "{name}");
            assert_eq!(policy.denial(&named(name, 0), 3000, 0), None, "{name}");
            assert_eq!(policy.denial(&named(name, 0), 8000, 0), None, "{name}");
        }
        assert_eq!(policy.denial(&named("chromium", 1000), 11434, 0), None);
        assert_eq!(policy.denial(&named("curl", 0), 11434, 0), None);
        // `chrome_crashpad_handler` is not the browser.
        assert_eq!(
            policy.first_match(&named("chrome_crashpad_handler", 0)),
            None
        );
        let socat = policy.denial(&named("socat", 0), 3000, 0).map(usize::from);
        assert_eq!(socat, Some(rule("catalog:socat")));
    }

    #[test]
    fn audit_mode_makes_deny_would_deny_and_the_default_is_audit() {
        let policy = compile_ok(&POLICY.replace("enforce", "audit"), &host());
        assert_eq!(policy.browsers.verdict(11434), verdict::WOULD_DENY);
        assert_eq!(policy.browsers.verdict(3000), verdict::ALLOW);
        assert_eq!(policy.denial(&named("chromium", 0), 11434, 0), None);

        let default = compile_ok("mode = \"enforce\"\n", &host());
        assert!((0..=u16::MAX).all(|p| default.browsers.verdict(p) == verdict::AUDIT));
        let denying = compile_ok(
            "mode = \"enforce\"\n[browsers]\naction = \"deny\"\nallow = [3000]\n",
            &host(),
        );
        assert_eq!(denying.browsers.verdict(8080), verdict::DENY);
        assert_eq!(denying.browsers.verdict(3000), verdict::ALLOW);
        assert!(denying.settings.browser != 0);
        // Without the catalog nothing is a browser unless [browsers] says so.
        let bare = compile_ok("catalog = false\n", &host());
        assert_eq!(bare.settings.browser, 0);
    }

    #[test]
    fn the_summary_shows_each_treatment() {
        let text = compile_ok(POLICY, &host()).to_string();
        for line in [
            "\nbrowsers:    5 browser-class rules",
            "\n  deny   11434, 9000-9099 (refused)\n",
            "\n  allow  3000 (let in)\n",
            "\n  audit  every other protected port (let in, reported)\n",
            "catalog:chromium               port ",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
    }
}
