//! The other tables: `[relay]`, `[provenance]`, `[ident]`, `[bind]`,
//! `[metrics]`, `[browsers]`, and the shipped file's defaults.

use super::*;

#[test]
fn relay_table_and_script_criterion() {
    let config = parse(
        "[relay]\naction = \"deny\"\nwindow_ms = 500\n\n[[rule]]\nname = \"s\"\naction = \"allow\"\nscript = [\"relay.py\", \"/srv/x.js\"]\n",
    )
    .unwrap();
    assert_eq!(config.relay.action, Action::Deny);
    assert_eq!(config.relay.window_ms, 500);
    assert_eq!(config.rules[0].criteria.script.len(), 2);
    assert_eq!(config.rules[0].criteria.script[1].at.line, 8);
    // Left out: the defaults.
    let config = parse("[relay]\n").unwrap();
    assert_eq!(config.relay, Config::embedded_default().relay);
    assert_eq!(config.relay.action, Action::Audit);

    expect_error("[relay]\nwindow_ms = 0\n", 2, "window_ms is 0");
    expect_error(
        "[[rule]]\nname = \"relay\"\naction = \"deny\"\ncomm = \"x\"\n",
        2,
        "`relay` is reserved",
    );
    expect_error("[relay]\nwindow_ms = 700000\n", 2, "from 1 to 600000");
    expect_error("[relay]\naction = \"maybe\"\n", 2, "unknown variant");
    expect_error("[relay]\nwindows = 5\n", 2, "unknown field");
    // The kernel keeps 63 bytes of a script's name: one of 63 reads as
    // every longer one starting with it.
    let script = |len| {
        let long = "x".repeat(len);
        format!("[[rule]]\nname = \"s\"\naction = \"deny\"\nscript = \"{long}\"\n")
    };
    for len in [63, 64] {
        expect_error(&script(len), 4, "give a path of at most 62 bytes");
    }
    parse(&script(62)).unwrap();
}

#[test]
fn provenance_and_ident_tables() {
    let config = parse(
        "[provenance]\ngetsockopt = false\n\n[ident]\nlisten = [\"127.0.0.1:113\", \"[::1]:113\"]\n\
         netns = \"/run/netns/blue\"\nrelayed = \"HIDDEN-USER\"\ntimeout_ms = 500\n",
    )
    .unwrap();
    assert!(config.provenance.tag && config.provenance.query);
    assert!(!config.provenance.getsockopt);
    let listen: Vec<String> = config
        .ident
        .listen
        .iter()
        .map(|l| l.value.to_string())
        .collect();
    assert_eq!(listen, ["127.0.0.1:113", "[::1]:113"]);
    assert_eq!(config.ident.listen[1].at.line, 5);
    assert_eq!(
        config.ident.netns.as_ref().map(|n| n.value.clone()),
        Some(PathBuf::from("/run/netns/blue"))
    );
    assert_eq!(config.ident.relayed.token(), "HIDDEN-USER");
    assert_eq!(config.ident.timeout_ms, 500);

    // Off by default; the embedded default tags and answers.
    let default = Config::embedded_default();
    assert!(default.ident.listen.is_empty());
    assert_eq!(default.ident.relayed.token(), "NO-USER");
    assert!(default.provenance.tag && default.provenance.getsockopt && default.provenance.query);

    expect_error(
        "[ident]\nlisten = [\"localhost:113\"]\n",
        2,
        "not a socket address",
    );
    expect_error("[ident]\nlisten = []\n", 2, "empty list");
    expect_error("[ident]\nlisten = \"127.0.0.1:0\"\n", 2, "has port 0");
    expect_error("[ident]\nnetns = \"blue\"\n", 2, "absolute path");
    expect_error("[ident]\ntimeout_ms = 0\n", 2, "from 100 to 600000");
    expect_error("[ident]\nrelayed = \"LIES\"\n", 2, "unknown variant");
    expect_error("[provenance]\ntagging = true\n", 2, "unknown field");
    let scoped =
        parse("[provenance]\ngetsockopt_cgroups = [\"ollama.service\", \"x/y\"]\n").unwrap();
    let named: Vec<&str> = scoped
        .provenance
        .getsockopt_cgroups
        .iter()
        .map(|c| c.value.as_str())
        .collect();
    assert_eq!(named, ["ollama.service", "x/y"]);
    assert!(default.provenance.getsockopt_cgroups.is_empty());
    expect_error("[provenance]\ngetsockopt_cgroups = []\n", 2, "empty list");
    expect_error(
        "[provenance]\ngetsockopt_cgroups = \"\"\n",
        2,
        "empty string",
    );
    expect_error(
        "[provenance]\ngetsockopt_cgroups = [\"..\"]\n",
        2,
        "getsockopt_cgroups `..` has a `..` component: name a cgroup by its path",
    );
}

#[test]
fn provenance_connections_sizes_the_kernel_table_within_bounds() {
    let default = Config::embedded_default();
    assert_eq!(default.provenance.connections, loopwarden_common::MAX_CONNS);
    assert_eq!(
        parse("[provenance]\nconnections = 65536\n")
            .unwrap()
            .provenance
            .connections,
        65536
    );
    // Both bounds are accepted; one past either is refused at its line.
    for ok in [1024, 1_048_576] {
        let config = parse(&format!("[provenance]\nconnections = {ok}\n")).unwrap();
        assert_eq!(i64::from(config.provenance.connections), ok);
    }
    for bad in ["1023", "1048577", "0", "-1"] {
        expect_error(
            &format!("[provenance]\ntag = true\nconnections = {bad}\n"),
            3,
            "from 1024 to 1048576",
        );
    }
    expect_error("[provenance]\nconnections = \"many\"\n", 2, "invalid type");
}

#[test]
fn bind_table() {
    assert_eq!(parse("mode = \"audit\"\n").unwrap().bind, Bind::default());
    let config = parse(
        "[bind]\nloopback_only = [11434, \"9000-9100\"]\nallow_exe = \"/usr/sbin/nginx\"\n\
         allow_user = [\"www-data\"]\nallow_uid = [33, 0]\n",
    )
    .unwrap();
    let b = &config.bind;
    assert_eq!(
        b.loopback_only,
        [
            PortRange {
                first: 11434,
                last: 11434
            },
            PortRange {
                first: 9000,
                last: 9100
            }
        ]
    );
    assert_eq!(b.allow_exe[0].value, PathBuf::from("/usr/sbin/nginx"));
    assert_eq!(b.allow_exe[0].at.line, 3);
    assert_eq!(b.allow_user[0].value, "www-data");
    let uids: Vec<u32> = b.allow_uid.iter().map(|u| u.value).collect();
    assert_eq!(uids, [33, 0]);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // An empty list turns the guard off, like leaving the key out.
    let off = parse("[bind]\nloopback_only = []\n").unwrap();
    assert!(off.bind.loopback_only.is_empty());
    // Exemptions without ports do nothing: say so.
    let idle = parse("[bind]\nallow_uid = 33\n").unwrap();
    assert!(
        idle.warnings
            .iter()
            .any(|w| w.contains("bind guard is off")),
        "{:?}",
        idle.warnings
    );
}

#[test]
fn bad_bind_table() {
    expect_error("[bind]\nloopback_only = \"all\"\n", 2, "not \"all\"");
    expect_error("[bind]\nloopback_only = [80, \"all\"]\n", 2, "not \"all\"");
    expect_error(
        "[bind]\nloopback_only = [80, 0]\n",
        2,
        "port 0 is out of range",
    );
    expect_error("[bind]\nloopback_only = [\"9-1\"]\n", 2, "reversed");
    expect_error("[bind]\nloopback_only = [\"x\"]\n", 2, "not a port range");
    expect_error("[bind]\n\nallow_exe = \"nginx\"\n", 3, "absolute path");
    expect_error("[bind]\nallow_uid = []\n", 2, "empty list");
    expect_error("[bind]\nallow_user = \"\"\n", 2, "empty string");
    expect_error("[bind]\nports = [80]\n", 2, "unknown field");
    expect_error(
        "[[rule]]\nname = \"bind-guard\"\naction = \"deny\"\nuid = 0\n",
        2,
        "reserved",
    );
}

#[test]
fn metrics_table() {
    let default = parse("").unwrap();
    assert!(default.metrics.socket);
    assert_eq!(default.metrics.listen, None);

    let config =
        parse("[protect]\nports = [8080, \"9000-9100\"]\n\n[metrics]\nsocket = false\nlisten = \"127.0.0.1:9477\"\n")
            .unwrap();
    assert!(!config.metrics.socket);
    let listen = config.metrics.listen.as_ref().unwrap();
    assert_eq!(listen.value, "127.0.0.1:9477".parse().unwrap());
    assert_eq!(listen.at.line, 6);
    // The metrics port joins a listed port set, once.
    let PortSet::Ranges(ranges) = &config.protect.ports else {
        panic!("ports: {:?}", config.protect.ports);
    };
    assert_eq!(
        ranges.last(),
        Some(&PortRange {
            first: 9477,
            last: 9477
        })
    );
    let inside =
        parse("[protect]\nports = [\"9000-9500\"]\n[metrics]\nlisten = \"[::1]:9477\"\n").unwrap();
    assert_eq!(
        inside.protect.ports,
        PortSet::Ranges(vec![PortRange {
            first: 9000,
            last: 9500
        }])
    );
    // "all" already covers it.
    let all = parse("[metrics]\nlisten = \"127.0.0.1:9477\"\n").unwrap();
    assert_eq!(all.protect.ports, PortSet::All);

    expect_error(
        "[metrics]\nlisten = \"0.0.0.0:9477\"\n",
        2,
        "not a loopback address",
    );
    expect_error(
        "[metrics]\nlisten = \"localhost\"\n",
        2,
        "not a socket address",
    );
    expect_error("[metrics]\nport = 9477\n", 2, "unknown field");
    expect_error(
        "[metrics]\nlisten = \"[::1]:0\"\n",
        2,
        "port chosen at random",
    );
}

/// The commented file the package installs (`contrib/loopwarden.toml`) is the
/// embedded default as it stands, and still is with every `#key = value`
/// uncommented: the values it shows are the defaults. Its example rules parse.
#[test]
fn shipped_file_shows_the_defaults() {
    let text = include_str!("../../../../contrib/loopwarden.toml");
    let default = |config: &Config| Config {
        source: config.source.clone(),
        text: config.text.clone(),
        ..Config::embedded_default()
    };
    let shipped = parse(text).unwrap();
    assert!(shipped.warnings.is_empty(), "{:?}", shipped.warnings);
    assert_eq!(shipped, default(&shipped));

    let (settings, examples) = text.split_once("#[[rule]]").unwrap();
    let is_key = |l: &str| {
        l.strip_prefix('#')
            .and_then(|l| l.split_once(" = "))
            .is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
    };
    let uncommented: String = settings
        .lines()
        .map(|l| if is_key(l) { &l[1..] } else { l })
        .flat_map(|l| [l, "\n"])
        .collect();
    assert!(uncommented.matches("\n").count() > 10 && uncommented.contains("\nwindow_ms = 2000\n"));
    let all_keys = parse(&uncommented).unwrap();
    assert_eq!(all_keys, default(&all_keys));

    let rules: String = format!("#[[rule]]{examples}")
        .lines()
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .flat_map(|l| [l, "\n"])
        .collect();
    let examples = parse(&rules).unwrap();
    assert_eq!(examples.rules.len(), 2);
    assert_eq!(examples.egress.len(), 1);
}

#[test]
fn browsers_table() {
    let d = parse("mode = \"audit\"\n").unwrap().browsers;
    assert_eq!(d, Config::embedded_default().browsers);
    assert_eq!(d.action, Action::Audit);
    assert_eq!(d.rules(), 0);
    let config = parse(
        "[protect]\nports = [3000, 11434, \"8000-8100\"]\nhost_addresses = true\n\
         [browsers]\naction = \"allow\"\n\
         deny = [11434, \"8000-8100\"]\nallow = [3000]\naudit = []\n\
         exe_name = [\"code\", \"slack\"]\nexe = \"/opt/app/app\"\n",
    )
    .unwrap();
    let b = &config.browsers;
    assert_eq!(b.action, Action::Allow);
    let ranges = |list: &[Located<PortRange>]| -> Vec<String> {
        list.iter()
            .map(|r| format!("{}@{}", r.value, r.at.line))
            .collect()
    };
    assert_eq!(ranges(&b.deny), ["11434@6", "8000-8100@6"]);
    assert_eq!(ranges(&b.allow), ["3000@7"]);
    assert!(b.audit.is_empty());
    assert_eq!(b.exe_name[1].value, "slack");
    assert_eq!(b.exe[0].value, PathBuf::from("/opt/app/app"));
    assert_eq!(b.rules(), 2);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // A list's range not all protected is said; one inside the protected
    // ports, even across two of their ranges, is not.
    let text = "[protect]\nports = [\"8000-8049\", \"8050-8100\", 11434]\nhost_addresses = true\n\
                [browsers]\ndeny = [\"8000-8100\", \"11434-11435\"]\n";
    let warnings = parse(text).unwrap().warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(":5: [browsers] lists 11434-11435 but [protect] ports does not"),
        "{warnings:?}"
    );
    // Many protected ranges cost a pass, not one per port of each (the
    // lists' own ranges may not overlap: at most 65,535).
    let many = format!(
        "[protect]\nports = [{}\"1-65535\"]\nhost_addresses = true\n[browsers]\n\
         deny = [\"2-65535\"]\n",
        "1, ".repeat(300_000)
    );
    assert!(parse(&many).unwrap().warnings.is_empty());
    // With the catalog off and no program named, the lists judge no one.
    let lists_only = "catalog = false\n[protect]\nports = [11434]\n[bind]\n\
                      loopback_only = [11434]\n[browsers]\ndeny = [11434]\n";
    let warnings = parse(lists_only).unwrap().warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(":7: [browsers] lists ports")
                && w.contains("the lists judge no one")),
        "{warnings:?}"
    );
    let named = format!("{lists_only}exe_name = [\"code\"]\n");
    let warnings = parse(&named).unwrap().warnings;
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn a_browser_port_reachable_at_a_host_address_is_warned_of() {
    let by_lan = "a page reaches a service that listens on every address at the host's own";
    let warned = |text: &str| -> Vec<String> {
        parse(text)
            .unwrap()
            .warnings
            .into_iter()
            .filter(|w| w.contains(by_lan))
            .collect()
    };
    let listed = "[protect]\nports = [11434, 11500]\n[browsers]\ndeny = [11434]\n";
    let warnings = warned(listed);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(":4: [browsers] deny lists 11434, but"),
        "{warnings:?}"
    );
    // Host addresses judged, or the service kept on loopback: not said.
    let judged = listed.replace("[browsers]", "host_addresses = true\n[browsers]");
    assert_eq!(warned(&judged), Vec::<String>::new());
    let kept = format!("{listed}[bind]\nloopback_only = [\"11000-11999\"]\n");
    assert_eq!(warned(&kept), Vec::<String>::new());
    // A deny for every port not listed, with no port kept on loopback.
    let every = "[protect]\nports = [11434]\n[browsers]\naction = \"deny\"\n";
    let warnings = warned(every);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("[browsers] action = \"deny\", but"),
        "{warnings:?}"
    );
    assert_eq!(warned("[protect]\nports = [11434]\n"), Vec::<String>::new());
    // Some port kept on loopback, but not every one `action = "deny"`
    // refuses browsers on: said (the build before said nothing once any
    // port was kept).
    let some = "[protect]\nports = [11434, 8000]\n[browsers]\naction = \"deny\"\n\
                [bind]\nloopback_only = [11434]\n";
    assert_eq!(warned(some).len(), 1, "{some}");
    // Every one kept, or the rest let in by a list: not said.
    let all_kept = some.replace("[11434]\n", "[11434, 8000]\n");
    assert_eq!(warned(&all_kept), Vec::<String>::new());
    let rest_allowed = some.replace("action = \"deny\"\n", "action = \"deny\"\nallow = [8000]\n");
    assert_eq!(warned(&rest_allowed), Vec::<String>::new());
    // A deny range kept by two ranges of the bind guard together.
    let split = format!("{listed}[bind]\nloopback_only = [\"11000-11434\", \"11435-11999\"]\n");
    assert_eq!(warned(&split), Vec::<String>::new());
}

#[test]
fn bad_browsers_table() {
    // A port gets one treatment: the second listing names the first.
    let twice = "already listed in [browsers] deny at line 2";
    for (text, line, phrase) in [
        (
            "deny = [11434]\nallow = [3000, 11434]\n",
            3,
            "port 11434 is already listed",
        ),
        (
            "deny = [\"8000-8100\"]\n\naudit = [\"8100-8200\"]\n",
            4,
            "port 8100 is already",
        ),
        ("deny = [80, 80]\n", 2, twice),
        ("deny = \"all\"\n", 2, "not \"all\""),
        ("allow = [0]\n", 2, "port 0 is out of range"),
        ("action = \"block\"\n", 2, "unknown variant"),
        ("ports = [80]\n", 2, "unknown field"),
        ("exe_name = \"a/b\"\n", 2, "file name"),
        ("exe = \"app\"\n", 2, "absolute path"),
    ] {
        let err = expect_error(&format!("[browsers]\n{text}"), line, phrase);
        if phrase.contains("already") {
            assert!(err.to_string().contains(twice), "{err}");
        }
    }
    expect_error(
        "[[rule]]\nname = \"browsers\"\naction = \"deny\"\ncomm = \"x\"\n",
        2,
        "reserved",
    );
    // A listed port the policy does not protect is never judged: say so.
    let config = parse("[protect]\nports = [8080]\n[browsers]\ndeny = [\"8080-8081\"]\n").unwrap();
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.starts_with("test.toml:4: [browsers] lists 8080-8081")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn browsers_rules_count_towards_the_limit() {
    let fit = MAX_RULES - CATALOG.len() - 1;
    let rules: String = (0..=fit)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\ncomm = \"x\"\n"))
        .collect();
    let ok = rules.rsplit_once("[[rule]]").map_or("", |(head, _)| head);
    parse(&format!("[browsers]\nexe_name = \"slack\"\n{ok}")).unwrap();
    let err = parse(&format!("[browsers]\nexe_name = \"slack\"\n{rules}")).unwrap_err();
    assert!(err.to_string().contains("too many rules"), "{err}");
}

#[test]
fn listeners_that_take_one_port_are_refused_where_the_second_is_named() {
    let twice = "[ident]\nlisten = [\n  \"127.0.0.1:113\",\n  \"127.0.0.1:113\",\n]\n";
    expect_error(twice, 4, "the listen address at line 3 takes");
    let wildcard = "[ident]\nlisten = [\"[::]:113\",\n  \"127.0.0.1:113\"]\n";
    expect_error(wildcard, 3, "a wildcard that holds it");
    let metrics =
        "[ident]\nlisten = [\"127.0.0.1:9477\"]\n[metrics]\nlisten = \"127.0.0.1:9477\"\n";
    expect_error(metrics, 4, "at line 2");
    let mapped = "[ident]\nlisten = [\"[::ffff:127.0.0.1]:113\",\n  \"127.0.0.1:113\"]\n";
    expect_error(mapped, 3, "the listen address at line 2 takes");
    // An ident responder in a namespace of its own binds there.
    let apart_ns = parse(
        "[ident]\nlisten = [\"127.0.0.1:9477\"]\nnetns = \"/run/netns/x\"\n[metrics]\nlisten = \"127.0.0.1:9477\"\n",
    );
    assert!(apart_ns.is_ok(), "{apart_ns:?}");
    // An IPv4 wildcard leaves IPv6's addresses alone; other ports are others.
    let apart =
        parse("[ident]\nlisten = [\"0.0.0.0:113\", \"[::1]:113\", \"127.0.0.1:114\"]\n").unwrap();
    assert_eq!(apart.ident.listen.len(), 3);
    // Off loopback: said, not refused.
    assert!(
        apart.warnings.iter().any(|w| w.contains("test.toml:2:")
            && w.contains("ident listens on 0.0.0.0:113, not a loopback address")),
        "{:?}",
        apart.warnings
    );
}

#[test]
fn an_ident_namespace_without_listeners_is_said_to_do_nothing() {
    let config = parse("[ident]\nnetns = \"/run/netns/x\"\n").unwrap();
    assert!(
        config.warnings.iter().any(|w| w.starts_with("test.toml:2:")
            && w.contains("[ident] lists no listen address: the ident responder is off")),
        "{:?}",
        config.warnings
    );
}

/// A setting another one makes moot is warned of, at its line: ident
/// without the tag answers NO-USER to everyone; getsockopt cgroups with
/// getsockopt off are ignored. With the tag (the default) and getsockopt
/// on, neither warning.
#[test]
fn settings_another_makes_moot_are_warned_of() {
    let moot = parse(
        "[provenance]\ntag = false\ngetsockopt = false\ngetsockopt_cgroups = [\"/system.slice\"]\n\
         [ident]\nlisten = [\"127.0.0.1:113\"]\n",
    )
    .unwrap();
    for (line, phrase) in [
        ("test.toml:4:", "getsockopt_cgroups is ignored"),
        ("test.toml:6:", "every reply is `ERROR : NO-USER`"),
    ] {
        assert!(
            moot.warnings
                .iter()
                .any(|w| w.starts_with(line) && w.contains(phrase)),
            "{phrase}: {:?}",
            moot.warnings
        );
    }
    let fine = parse(
        "[provenance]\ngetsockopt_cgroups = [\"/system.slice\"]\n[ident]\nlisten = [\"127.0.0.1:113\"]\n",
    )
    .unwrap();
    assert!(fine.warnings.is_empty(), "{:?}", fine.warnings);
}
