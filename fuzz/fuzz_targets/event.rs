//! Ring-buffer records: any bytes the kernel (or a corrupted buffer) could
//! hand over, decoded and turned into both audit line formats.

#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use loopwarden::{
    events::{self, Enricher, LogFormat},
    policy::{Action, RuleInfo},
};
use loopwarden_common::ConnectEvent;

fuzz_target!(|data: &[u8]| {
    let Some(mut event) = events::parse_event(data) else {
        assert!(data.len() < std::mem::size_of::<ConnectEvent>());
        return;
    };
    // Keep /proc out of it: pid 0 never names a process, so the enricher
    // works from the record alone (plus NSS for the user name).
    event.tgid = 0;
    event.ppid = 0;
    let rules: Vec<RuleInfo> = ["catalog:socat", "relay", "allow.me:1"]
        .into_iter()
        .map(|name| RuleInfo {
            name: name.to_owned(),
            action: Action::Deny,
            matches: "exe_name in [socat]".to_owned(),
            browser: false,
        })
        .collect();
    let mut enricher = Enricher::new(PathBuf::from("/nonexistent-cgroup-root"));
    // Both a policy it knows (the record's own sequence number) and one it
    // does not (rules named by index).
    if event.policy_seq % 2 == 0 {
        enricher.set_rules(event.policy_seq, rules);
    }
    let record = enricher.enrich(&event);
    for format in [LogFormat::Human, LogFormat::Json] {
        let line = record.format(format);
        // One record, one line: kernel-supplied names cannot forge another.
        assert!(!line.contains(['\n', '\r']), "{line}");
    }
});
