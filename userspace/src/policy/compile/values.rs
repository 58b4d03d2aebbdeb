//! Resolving the values a rule names: executables (with the earlier files
//! still running), users, cgroups and network namespaces.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use loopwarden_common::{
    ExeKey, MAX_CGROUP_LEVEL, MAX_CGROUP_LEVELS_USED, NETNS_INLINE, NETNS_NOT_INLINE, Settings,
};

use super::{Compiler, Leniency};
use crate::policy::{CgroupId, ExeFile, ExeIdentities, Netns, PolicyError, summary::ExeId};
use crate::{
    config::{Criteria, Located},
    error_chain,
};

impl Compiler<'_> {
    pub(super) fn netns(&mut self, paths: &[Located<PathBuf>]) -> Result<(), PolicyError> {
        for path in paths {
            let cookie = self
                .resolver
                .netns(&path.value)
                .map_err(|source| PolicyError::Netns {
                    file: self.file.to_owned(),
                    at: path.at,
                    path: path.value.clone(),
                    source,
                });
            let shown = path.value.display().to_string();
            let kept = self
                .previous
                .and_then(|p| p.netns.iter().find(|ns| ns.path == shown));
            let (cookie, inode) = match (cookie, kept) {
                (Err(e), Some(kept)) if self.leniency != Leniency::Strict => {
                    // The namespace itself may well live on: its cookie
                    // is never another's, so keeping it can only judge
                    // that namespace, alive, or nothing.
                    self.policy.warnings.push(format!(
                        "{}; the namespace it named stays in the scope (cookie {}): a \
                         namespace outlives its name while a process is in it (`ip netns \
                         attach NAME PID` names it again, where `ip netns add` would make \
                         another; remove the path from the file and reload to drop it)",
                        error_chain(&e),
                        kept.cookie
                    ));
                    (kept.cookie, kept.inode)
                }
                (cookie, _) => match self.tolerate(cookie)? {
                    Some(cookie) => (cookie, self.resolver.netns_inode(&path.value).unwrap_or(0)),
                    None => continue,
                },
            };
            // Two paths of one namespace (a bind mount and its source)
            // take one place.
            if self.policy.netns.iter().any(|ns| ns.cookie == cookie) {
                continue;
            }
            self.policy.netns.push(Netns {
                path: shown,
                cookie,
                inode,
            });
        }
        inline_netns(&mut self.policy.settings, &self.policy.netns);
        Ok(())
    }

    /// The copies of command `name` installed here (its path, and the file
    /// name the kernel sees: a symlink's target's), those that can be read.
    pub(super) fn installed_copies(&self, name: &str) -> Vec<(PathBuf, String)> {
        self.resolver
            .find_executables(name)
            .into_iter()
            .filter_map(|path| {
                let real = self.resolver.exe_file_name(&path).ok()?;
                Some((path, real))
            })
            .collect()
    }

    /// Warns of an `exe_name` value that names a command installed here
    /// as a link to a file of another name (`python3` to `python3.11`,
    /// `nc` to `nc.openbsd`): the kernel sees the file's own name, so the
    /// value does not match that command.
    pub(super) fn linked_names(&mut self, rule: &str, names: &[Located<String>]) {
        for name in names {
            for (path, real) in self.installed_copies(&name.value) {
                if real != name.value {
                    self.policy.warnings.push(format!(
                        "{}:{}: rule `{}`: exe_name `{}`: {} here is a link to `{real}`, the \
                         name the kernel sees, so this value does not match it (name `{real}` \
                         too, or the file by `exe`)",
                        self.file,
                        name.at,
                        rule,
                        name.value,
                        path.display()
                    ));
                }
            }
        }
    }

    /// Warns of a `script` value that is the path of a file whose `#!`
    /// interpreter the kernel reads no script of (a shell script): it never
    /// matches.
    pub(super) fn unread_scripts(&mut self, rule: &str, scripts: &[Located<String>]) {
        for script in scripts {
            if !script.value.starts_with('/') {
                continue;
            }
            if let Some((interpreter, false)) =
                self.resolver.script_interpreter(Path::new(&script.value))
            {
                self.policy.warnings.push(format!(
                    "{}:{}: rule `{rule}`: script `{}` is run by {interpreter}, which is not an \
                     interpreter whose script the kernel reads (python, node, perl, ruby, php, \
                     deno), so this value never matches (name the process by its `cgroup` or \
                     `uid`, or by what starts it, `parent_exe`)",
                    self.file, script.at, script.value
                ));
            }
        }
    }

    /// Resolves the cgroups of rule `rule`, each with a description; the
    /// levels they add to `levels` (those already named) stay within
    /// [`MAX_CGROUP_LEVELS_USED`]. A cgroup not found only warns.
    pub(super) fn cgroups(
        &mut self,
        rule: &str,
        cgroups: &[Located<String>],
        levels: u32,
    ) -> Result<Vec<(Option<CgroupId>, String)>, PolicyError> {
        let mut resolved = Vec::with_capacity(cgroups.len());
        let mut levels = levels;
        for cgroup in cgroups {
            match self.resolver.cgroup(&cgroup.value) {
                Ok(id)
                    if id.level as usize <= MAX_CGROUP_LEVEL
                        && (levels | 1 << id.level).count_ones() as usize
                            > MAX_CGROUP_LEVELS_USED =>
                {
                    let err = Err(PolicyError::CgroupLevels {
                        file: self.file.to_owned(),
                        at: cgroup.at,
                        rule: rule.to_owned(),
                        cgroup: cgroup.value.clone(),
                        level: id.level,
                        max: MAX_CGROUP_LEVELS_USED,
                    });
                    self.tolerate_limit::<()>(err, "this value matches nothing meanwhile")?;
                    resolved.push((
                        None,
                        format!("{} (level {} over the limit)", cgroup.value, id.level),
                    ));
                }
                Ok(id) if id.level as usize > MAX_CGROUP_LEVEL => {
                    return Err(PolicyError::CgroupTooDeep {
                        file: self.file.to_owned(),
                        at: cgroup.at,
                        rule: rule.to_owned(),
                        cgroup: cgroup.value.clone(),
                        level: id.level,
                        max: MAX_CGROUP_LEVEL,
                    });
                }
                Ok(id) => {
                    levels |= 1 << id.level;
                    resolved.push((
                        Some(id),
                        format!("{} (id {}, level {})", cgroup.value, id.id, id.level),
                    ));
                }
                Err(e) => {
                    // Not found, or a bare name more than one cgroup has.
                    let (what, until) = if e.kind() == std::io::ErrorKind::NotFound {
                        ("not found", "until the cgroup exists")
                    } else {
                        ("does not resolve", "until it resolves")
                    };
                    self.policy.warnings.push(format!(
                        "{}:{}: rule `{}`: cgroup `{}` {what} ({e}); the rule is loaded, but \
                         this value matches nothing {until} (the daemon looks again every second)",
                        self.file, cgroup.at, rule, cgroup.value
                    ));
                    resolved.push((None, format!("{} ({what})", cgroup.value)));
                }
            }
        }
        Ok(resolved)
    }

    /// The uids of a rule's `uid` and `user` criteria, each with a
    /// description.
    pub(super) fn uids(
        &mut self,
        rule: &str,
        c: &Criteria,
    ) -> Result<Vec<(u32, String)>, PolicyError> {
        let mut uids: Vec<(u32, String)> = c
            .uid
            .iter()
            .map(|uid| (uid.value, uid.value.to_string()))
            .collect();
        for user in &c.user {
            if let Some(uid) = self.user(rule, user)? {
                uids.push((uid, format!("{uid} (user {})", user.value)));
            }
        }
        Ok(uids)
    }

    /// Resolves a user name of rule `rule` to its uid (`None`: it does
    /// not resolve, tolerated). A lookup that fails with an error keeps
    /// the uid the previous policy resolved the name to, said.
    pub(super) fn user(
        &mut self,
        rule: &str,
        user: &Located<String>,
    ) -> Result<Option<u32>, PolicyError> {
        let kept = self
            .previous
            .and_then(|p| p.users.get(&user.value))
            .copied();
        let uid = match self.resolver.user(&user.value) {
            Ok(Some(uid)) => Ok(uid),
            Err(e) if let Some(uid) = kept => {
                self.policy.warnings.push(format!(
                    "{}:{}: rule `{rule}`: looking up user `{}` failed ({e}); it keeps uid \
                     {uid}, which it resolved to before",
                    self.file, user.at, user.value
                ));
                Ok(uid)
            }
            Ok(None) => Err(PolicyError::UnknownUser {
                file: self.file.to_owned(),
                at: user.at,
                rule: rule.to_owned(),
                user: user.value.clone(),
            }),
            Err(source) => Err(PolicyError::UserLookup {
                file: self.file.to_owned(),
                at: user.at,
                rule: rule.to_owned(),
                user: user.value.clone(),
                source,
            }),
        };
        if let Ok(uid) = uid {
            self.policy.users.insert(user.value.clone(), uid);
        }
        self.tolerate(uid)
    }

    /// Resolves executable paths to keys, with a description of each: the
    /// file at each path now, and earlier ones that processes still run
    /// (for an exemption, `exempts`, only as [`Self::kept`] says).
    pub(super) fn exes(
        &mut self,
        rule: &str,
        field: &'static str,
        paths: &[Located<PathBuf>],
        exempts: bool,
    ) -> Result<Vec<(ExeKey, String)>, PolicyError> {
        let mut resolved = Vec::with_capacity(paths.len());
        for path in paths {
            let file = self
                .resolver
                .exe(&path.value)
                .map_err(|source| PolicyError::Exe {
                    file: self.file.to_owned(),
                    at: path.at,
                    rule: rule.to_owned(),
                    field,
                    path: path.value.clone(),
                    source,
                })
                .and_then(|file| self.unambiguous(rule, field, path, file));
            let kept = self.kept(&path.value, file.as_ref().ok(), exempts);
            // A link to a program that is many programs (not a file of that
            // name itself) stands for all it runs.
            let many = file
                .as_ref()
                .ok()
                .map(|f| f.real_path.clone())
                .filter(|real| {
                    let real_name = real.file_name();
                    real_name != path.value.file_name()
                        && real_name
                            .and_then(|n| n.to_str())
                            .is_some_and(super::builtin::is_multi_call)
                });
            let meanwhile = match (kept.first_key_value(), &file) {
                (Some((_, pid)), _) => format!(
                    "until it resolves again, this value matches only the earlier file still \
                     running (pid {pid})"
                ),
                (None, Err(PolicyError::ExeAmbiguous { .. })) => {
                    "this value is skipped (it matches nothing)".to_owned()
                }
                (None, _) => "this value matches nothing until it resolves again".to_owned(),
            };
            let current = match file {
                ambiguous @ Err(PolicyError::ExeAmbiguous { .. }) => {
                    self.tolerate_limit(ambiguous, &meanwhile)?
                }
                file => self.tolerate_as(file, &meanwhile)?,
            }
            .map(|file| file.key);
            let shown = path.value.display();
            if let Some(key) = current {
                resolved.push((key, format!("{shown} ({})", ExeId(key))));
            }
            if let Some(target) = many {
                self.policy.warnings.push(format!(
                    "{}:{}: rule `{}`: {field} {shown} is a link to {}, a program that is many \
                     programs: this matches every program it runs, not only {}; name the \
                     program's own file (a snap's is under /snap/NAME/current/), or use exe_name",
                    self.file,
                    path.at,
                    rule,
                    target.display(),
                    path.value
                        .file_name()
                        .map_or_else(|| shown.to_string(), |n| n.to_string_lossy().into_owned())
                ));
            }
            for (&key, pid) in &kept {
                self.policy.warnings.push(format!(
                    "{}:{}: rule `{}`: {field} {shown} ({}) was replaced on disk; it still \
                     matches while it runs (pid {pid}), and stops matching when no process \
                     runs it any more",
                    self.file,
                    path.at,
                    rule,
                    ExeId(key)
                ));
                resolved.push((
                    key,
                    format!(
                        "{shown} ({}; replaced on disk, still running as pid {pid})",
                        ExeId(key)
                    ),
                ));
            }
            // Another rule's value of the same path may keep more (one
            // that is no exemption): the next compile starts from all.
            let ids = self
                .policy
                .exe_paths
                .entry(path.value.clone())
                .or_insert_with(|| ExeIdentities {
                    current,
                    kept: BTreeMap::new(),
                });
            ids.kept.extend(kept);
        }
        Ok(resolved)
    }

    /// Warns of each path of an exemption (`field` of `rule`, which lets
    /// what it names through) that another user could replace: they would
    /// choose what the rule lets through.
    pub(super) fn replaceable(&mut self, rule: &str, field: &str, paths: &[Located<PathBuf>]) {
        for path in paths {
            if self.resolver.others_may_replace(&path.value) {
                self.policy.warnings.push(format!(
                    "{}:{}: rule `{rule}`: {field} {}: another user could put another \
                     program there (the file is not root's, others may write it, or it or a \
                     link on the way to it is in a directory that is not root's alone), and \
                     this rule would let that program through; keep what it names where only \
                     root can write",
                    self.file,
                    path.at,
                    path.value.display()
                ));
            }
        }
    }

    /// Refuses a file whose `stat()` device is not the one the kernel reads
    /// (btrfs, overlayfs over several filesystems): the kernel's key, the
    /// superblock's device and the inode, may name another file too.
    pub(super) fn unambiguous(
        &self,
        rule: &str,
        field: &'static str,
        path: &Located<PathBuf>,
        file: ExeFile,
    ) -> Result<ExeFile, PolicyError> {
        match &file.mount {
            Some(mount) if mount.dev != file.key.dev => Err(PolicyError::ExeAmbiguous {
                file: self.file.to_owned(),
                at: path.at,
                rule: rule.to_owned(),
                field,
                path: path.value.clone(),
                stat_dev: file.key.dev,
                mount: Box::new(mount.clone()),
            }),
            _ => Ok(file),
        }
    }

    /// Earlier files of `path` that processes still run, with a pid running
    /// each: those it stood for in the previous policy, or, when that one
    /// did not have it, deleted files that processes were started from at
    /// this very path.
    ///
    /// For an exemption (`exempts`), of the former too only those that run
    /// deleted from where the path leads now (an upgrade's rename, or a
    /// removal): not an
    /// old file still on disk (a link's target before it was pointed
    /// elsewhere), which anyone may start anew, nor a file that took the
    /// inode of one gone, which would have its exemption.
    pub(super) fn kept(
        &mut self,
        path: &Path,
        current: Option<&ExeFile>,
        exempts: bool,
    ) -> BTreeMap<ExeKey, u32> {
        let now = current.map(|file| file.key);
        let mut kept = BTreeMap::new();
        let previous = self.previous;
        match previous.and_then(|p| p.exe_paths.get(path)) {
            Some(before) => {
                for &key in before.current.iter().chain(before.kept.keys()) {
                    if Some(key) == now || kept.contains_key(&key) {
                        continue;
                    }
                    if exempts {
                        let here = match current {
                            Some(file) => Some(file.real_path.clone()),
                            None => self.resolver.missing_exe(path).map(|(was, _)| was),
                        };
                        if let Some(live) = self.live().get(&key)
                            && here.is_some()
                            && live.deleted_path == here
                        {
                            kept.insert(key, live.pid);
                        }
                        continue;
                    }
                    // While the process shown last time still runs the file,
                    // no walk of /proc is needed.
                    if let Some(&pid) = before.kept.get(&key)
                        && self.resolver.running_exe(pid) == Some(key)
                    {
                        kept.insert(key, pid);
                    } else if let Some(live) = self.live().get(&key) {
                        kept.insert(key, live.pid);
                    }
                }
            }
            None => {
                // Nothing known yet (start-up, check-config, a path new in a
                // reloaded file). rename() cannot cross filesystems, so an
                // upgrade leaves the old file on the device of the new one;
                // that also keeps out a file of another mount namespace that
                // happened to be deleted under the same name. With no file
                // there now (removed, not replaced), where it was: its
                // directory's device.
                let (real, dev) = match current {
                    Some(file) => (file.real_path.clone(), file.key.dev),
                    None => match self.resolver.missing_exe(path) {
                        Some(was) => was,
                        None => return kept,
                    },
                };
                for (&key, live) in self.live() {
                    if Some(key) != now
                        && key.dev == dev
                        && live.deleted_path.as_deref() == Some(real.as_path())
                    {
                        kept.insert(key, live.pid);
                    }
                }
            }
        }
        kept
    }
}

/// Puts the distinct cookies of `netns` into `settings` when there are at
/// most [`NETNS_INLINE`], so the programs compare them instead of looking
/// `LW_NETNS` up (which holds them either way); else marks them
/// [`NETNS_NOT_INLINE`].
fn inline_netns(settings: &mut Settings, netns: &[Netns]) {
    let mut cookies: Vec<u64> = netns.iter().map(|n| n.cookie).collect();
    cookies.sort_unstable();
    cookies.dedup();
    settings.netns = [0; NETNS_INLINE];
    if cookies.len() > NETNS_INLINE {
        settings.netns_inline = NETNS_NOT_INLINE;
        return;
    }
    settings.netns[..cookies.len()].copy_from_slice(&cookies);
    settings.netns_inline = cookies.len() as u32;
}
