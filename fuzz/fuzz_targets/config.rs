//! The policy file: TOML parsing and validation, then compilation (strict
//! and lenient) against a made-up host, the map-size check and the summary
//! `check-config` prints. Hermetic: the resolver derives every answer from
//! a hash of the name, except that some cgroups go to the real resolver on a
//! cgroup root that does not exist (its path checks, then "not found"); no
//! file is opened, no namespace entered.

#![no_main]

use std::{
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use libfuzzer_sys::fuzz_target;
use loopwarden::{
    catalog::CATALOG,
    config::{Config, PortSet},
    kernel::maps,
    policy::{self, CgroupId, ExeFile, LiveExe, LiveExes, MountDev, Resolver},
    resolve::HostResolver,
};
use loopwarden_common::ExeKey;

const NAME: &str = "fuzz.toml";

/// FNV-1a: a stable stand-in for whatever the host would answer.
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn missing() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

/// A host where some names resolve and some do not, decided by their hash.
struct FakeHost;

impl Resolver for FakeHost {
    fn exe(&self, path: &Path) -> io::Result<ExeFile> {
        let h = hash(path.as_os_str().as_bytes());
        if h % 7 == 0 {
            return Err(missing());
        }
        let key = ExeKey::from_major_minor(h >> 52, h & 0xff, h);
        // Sometimes on a filesystem whose superblock device differs from
        // stat()'s (btrfs), which the compiler must refuse.
        let dev = if h % 5 == 0 { key.dev ^ 1 } else { key.dev };
        Ok(ExeFile {
            key,
            real_path: path.to_owned(),
            mount: Some(MountDev {
                dev,
                fs_type: if h % 5 == 0 { "btrfs" } else { "ext4" }.to_owned(),
                mount_point: PathBuf::from("/"),
            }),
        })
    }

    fn live_exes(&self) -> LiveExes {
        // One running file, deleted since: the compiler may keep it.
        let mut live = LiveExes::new();
        live.insert(
            ExeKey::from_major_minor(1, 2, 3),
            LiveExe {
                pid: 42,
                deleted_path: Some(PathBuf::from("/usr/bin/socat")),
            },
        );
        live
    }

    fn running_exe(&self, pid: u32) -> Option<ExeKey> {
        (pid == 42).then(|| ExeKey::from_major_minor(1, 2, 3))
    }

    fn exe_file_name(&self, path: &Path) -> io::Result<String> {
        path.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(missing)
    }

    fn find_executables(&self, name: &str) -> Vec<PathBuf> {
        if hash(name.as_bytes()) % 3 == 0 {
            vec![PathBuf::from(format!("/opt/{name}/bin/{name}-x86_64"))]
        } else {
            Vec::new()
        }
    }

    fn user(&self, name: &str) -> io::Result<Option<u32>> {
        let h = hash(name.as_bytes());
        match h % 8 {
            0 => Err(io::Error::other("the directory service is down")),
            1 | 2 => Ok(None),
            _ => Ok(Some(h as u32)),
        }
    }

    fn cgroup(&self, path_or_unit: &str) -> io::Result<CgroupId> {
        let h = hash(path_or_unit.as_bytes());
        if h % 6 == 0 {
            return HostResolver::new(PathBuf::from("/nonexistent-loopwarden-fuzz-root"))
                .cgroup(path_or_unit);
        }
        Ok(CgroupId {
            id: h,
            // Past MAX_CGROUP_LEVEL too, to reach that error.
            level: ((h >> 8) % 40) as u32,
        })
    }

    fn netns(&self, path: &Path) -> io::Result<u64> {
        let h = hash(path.as_os_str().as_bytes());
        if h % 5 == 0 { Err(missing()) } else { Ok(h) }
    }
}

fuzz_target!(|data: &[u8]| {
    let config = match Config::from_bytes_named(data, NAME) {
        Ok(config) => config,
        Err(err) => {
            // Every rejection names the file, each of its problems does.
            for problem in err.problems() {
                let message = problem.to_string();
                assert!(message.starts_with(NAME), "{message}");
            }
            return;
        }
    };
    for lenient in [false, true] {
        let compiled = if lenient {
            policy::compile_lenient(&config, &FakeHost, None)
        } else {
            policy::compile(&config, &FakeHost)
        };
        let compiled = match compiled {
            Ok(compiled) => compiled,
            Err(err) => {
                for problem in err.problems() {
                    let message = problem.to_string();
                    assert!(message.starts_with(NAME), "{message}");
                }
                continue;
            }
        };
        // Every rule gets its bit, catalog included, none more.
        let catalog = if config.catalog { CATALOG.len() } else { 0 };
        assert_eq!(compiled.rules.len(), config.rules.len() + catalog);
        assert_eq!(
            compiled.settings.active.count_ones() as usize,
            compiled.rules.len()
        );
        // Every port the file names is protected.
        if let PortSet::Ranges(ranges) = &config.protect.ports {
            for range in ranges {
                assert!(compiled.ports.contains(range.first));
                assert!(compiled.ports.contains(range.last));
            }
        }
        let _ = maps::check_fits(&compiled);
        let _ = compiled.to_string();
    }
});
