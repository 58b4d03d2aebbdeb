//! What `bpftool` shows of the kernel: loaded programs, and a test
//! install's pinned maps and their entries.

use std::{os::unix::fs::MetadataExt as _, path::Path, process::Command};

use serde_json::Value;

use crate::{Install, Netns, run};

/// Ids of loaded programs named `name` (from `bpftool`, which must
/// answer with its list: tests use this to show programs are gone, which
/// a failed bpftool's empty output would "show" too).
pub fn prog_ids(name: &str) -> Vec<u64> {
    let out = run(Command::new("bpftool").args(["-j", "prog", "show"]));
    assert!(out.status.success(), "bpftool prog show: {out:?}");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool's program list");
    progs
        .as_array()
        .expect("bpftool's program list is a list")
        .iter()
        .filter(|p| p["name"] == name)
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Every entry of `install`'s pinned map `name`, as bpftool dumps it.
pub fn map_dump(install: &Install, name: &str) -> Vec<Value> {
    serde_json::from_value(pinned_map(install, "dump", name)).expect("bpftool's entry list")
}

/// What bpftool shows of `install`'s pinned map `name` (`id`,
/// `max_entries`, ...).
pub fn map_show(install: &Install, name: &str) -> Value {
    pinned_map(install, "show", name)
}

/// Writes `value` under `key` in `install`'s pinned map `name`
/// (`bpftool map update`), which must succeed.
pub fn map_update(install: &Install, name: &str, key: &[u8], value: &[u8]) {
    let out = run(Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(install.pin_dir().join("maps").join(name))
        .args(["key", "hex"])
        .args(hex_args(key))
        .args(["value", "hex"])
        .args(hex_args(value)));
    assert!(out.status.success(), "{out:?}");
}

/// `bpftool -j map VERB pinned` of `install`'s map `name`, which must succeed.
fn pinned_map(install: &Install, verb: &str, name: &str) -> Value {
    let map = install.pin_dir().join("maps").join(name);
    let out = run(Command::new("bpftool")
        .args(["-j", "map", verb, "pinned"])
        .arg(&map));
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("bpftool's JSON")
}

/// The bytes of a bpftool JSON byte list (`["0x01", ...]`).
pub fn hex_bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .expect("a byte list")
        .iter()
        .map(|b| {
            let hex = b.as_str().expect("a hex byte").trim_start_matches("0x");
            u8::from_str_radix(hex, 16).expect("a hex byte")
        })
        .collect()
}

/// The tgids `install`'s `LW_LISTENERS` credits listeners on `port` in
/// the namespace `ns` to.
pub fn listener_tgids(install: &Install, ns: &Netns, port: u16) -> Vec<u32> {
    let netns = std::fs::metadata(ns.path())
        .expect("the namespace's file")
        .ino() as u32;
    let mut key = netns.to_ne_bytes().to_vec();
    key.extend(port.to_ne_bytes());
    map_dump(install, "LW_LISTENERS")
        .iter()
        .filter(|e| hex_bytes(&e["key"])[..6] == key[..])
        .map(|e| u32::from_ne_bytes(hex_bytes(&e["value"])[..4].try_into().unwrap()))
        .collect()
}

/// `bytes` as bpftool's `hex` arguments.
pub fn hex_args(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The policy generation (first key word) of every entry in the pinned
/// map at `path` (one of a test install's own maps).
pub fn map_generations(path: &Path) -> Vec<u8> {
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path));
    assert!(out.status.success(), "bpftool map dump: {out:?}");
    let dump: Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    let entries: Vec<&Value> = match &dump {
        // One map: a list of entries; several: a list of lists.
        Value::Array(items) if items.iter().all(Value::is_array) => {
            items.iter().filter_map(Value::as_array).flatten().collect()
        }
        Value::Array(items) => items.iter().collect(),
        _ => Vec::new(),
    };
    entries
        .iter()
        .filter_map(|e| e["key"].as_array()?.first()?.as_str().map(str::to_owned))
        .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
        .collect()
}
