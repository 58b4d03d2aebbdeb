//! `/proc/self/mountinfo`, one line at a time: the fields loopwarden
//! reads (device, root, mount point, filesystem type), with the mount
//! point's octal escapes undone. (procfs's `MountInfo` keeps those
//! escapes, so a mount point with a space would not match its path.)

use std::path::PathBuf;

/// One mount, as a line of mountinfo describes it:
/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount<'a> {
    /// The superblock's device (`sb->s_dev`), major and minor.
    pub major: u64,
    pub minor: u64,
    /// The directory of the filesystem mounted (`/` unless a bind mount
    /// of a part of it).
    pub root: &'a str,
    pub mount_point: PathBuf,
    pub fs_type: &'a str,
    /// The superblock's options (`rw,hidepid=invisible,...`), empty when
    /// the line has none.
    pub super_options: &'a str,
}

/// The mounts `text` lists, in its order; a line that does not read is
/// left out.
pub fn mounts(text: &str) -> impl Iterator<Item = Mount<'_>> {
    text.lines().filter_map(mount)
}

fn mount(line: &str) -> Option<Mount<'_>> {
    let mut fields = line.split_ascii_whitespace();
    let (major, minor) = fields.nth(2)?.split_once(':')?;
    let root = fields.next()?;
    let mount_point = PathBuf::from(unescape(fields.next()?));
    fields.find(|&f| f == "-")?;
    let fs_type = fields.next()?;
    let _source = fields.next();
    Some(Mount {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root,
        mount_point,
        fs_type,
        super_options: fields.next().unwrap_or_default(),
    })
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes[i] {
            b'\\' => bytes.get(i + 1..i + 4).and_then(octal),
            _ => None,
        };
        if let Some(value) = escaped {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Three octal digits as a byte.
fn octal(digits: &[u8]) -> Option<u8> {
    digits.iter().try_fold(0u8, |acc, &d| match d {
        b'0'..=b'7' => acc.checked_mul(8)?.checked_add(d - b'0'),
        _ => None,
    })
}

/// Whether the `/proc` mount in `text` (mountinfo) hides processes from
/// other users (`hidepid` set to anything but `0`/`off`): they may not
/// read its files (command lines, cgroups) of processes not theirs.
pub fn proc_hides_pids(text: &str) -> bool {
    mounts(text)
        .filter(|m| m.fs_type == "proc" && m.mount_point == std::path::Path::new("/proc"))
        .last()
        .is_some_and(|m| {
            m.super_options
                .split(',')
                .filter_map(|option| option.strip_prefix("hidepid="))
                .any(|value| !matches!(value, "0" | "off"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_with_optional_fields_and_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 - ext3 /dev/root rw\n\
                    garbage\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        let all: Vec<_> = mounts(text).collect();
        assert_eq!(
            all,
            [
                Mount {
                    major: 98,
                    minor: 0,
                    root: "/mnt1",
                    mount_point: PathBuf::from("/mnt/my disk"),
                    fs_type: "ext3",
                    super_options: "rw",
                },
                Mount {
                    major: 0,
                    minor: 5,
                    root: "/",
                    mount_point: PathBuf::from("/proc"),
                    fs_type: "proc",
                    super_options: "rw",
                },
            ]
        );
    }

    #[test]
    fn unescape_leaves_other_backslashes() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\9b"), "a\\9b");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn hidepid_is_read_from_the_proc_mount() {
        let proc = |options: &str| {
            format!(
                "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                 25 22 0:22 / /proc rw,nosuid - proc proc {options}\n"
            )
        };
        assert!(!proc_hides_pids(&proc("rw")));
        assert!(!proc_hides_pids(&proc("rw,hidepid=0")));
        assert!(!proc_hides_pids(&proc("rw,hidepid=off")));
        assert!(proc_hides_pids(&proc("rw,hidepid=2")));
        assert!(proc_hides_pids(&proc("rw,hidepid=invisible,gid=4")));
        // A proc mounted elsewhere (a container's) is not the daemon's.
        let elsewhere = "26 22 0:23 / /srv/proc rw - proc proc rw,hidepid=2\n";
        assert!(!proc_hides_pids(&format!("{}{elsewhere}", proc("rw"))));
    }
}
