//! `loopwarden generate`: the man pages and shell completions, rendered from
//! the command line's own clap definitions so they never drift from it.
//! `cargo xtask dist` runs it to fill the Debian package.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use clap_complete::Shell;

/// What `loopwarden generate` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Artifact {
    /// `loopwarden.8` and one `loopwarden-COMMAND.8` per visible subcommand.
    Man,
    /// `loopwarden.bash`, `_loopwarden` (zsh) and `loopwarden.fish`.
    Completions,
}

/// Writes `what` for the command line `cmd` into `dir` (created if
/// missing) and returns the files written.
pub fn generate(what: Artifact, cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    match what {
        Artifact::Man => {
            let mut cmd = cmd.disable_help_subcommand(true);
            cmd.build();
            let mut written = Vec::new();
            man_pages(cmd, dir, &mut written)?;
            Ok(written)
        }
        Artifact::Completions => {
            let mut cmd = visible_only(&cmd);
            let name = cmd.get_name().to_owned();
            [Shell::Bash, Shell::Zsh, Shell::Fish]
                .into_iter()
                .map(|shell| clap_complete::generate_to(shell, &mut cmd, &name, dir))
                .collect()
        }
    }
}

/// `cmd` without its hidden subcommands (`baseline`, `generate`), which
/// clap_complete would offer like any other: the root rebuilt with the
/// visible ones. (clap has no way to remove a subcommand.)
fn visible_only(cmd: &clap::Command) -> clap::Command {
    let visible = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned();
    let mut root = clap::Command::new(cmd.get_name().to_owned())
        .propagate_version(true)
        .args(cmd.get_arguments().cloned())
        .subcommands(visible);
    if let Some(about) = cmd.get_about() {
        root = root.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        root = root.version(version.to_owned());
    }
    root
}

/// Section 8 (system administration): the page of `cmd`, then those of its
/// visible subcommands (named `loopwarden-run` and so on by clap).
fn man_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub.clone(), dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Administration");
    written.push(man.generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_offer_the_visible_subcommands_only() {
        let cmd = clap::Command::new("tool")
            .version("1.2.3")
            .subcommand(clap::Command::new("status").arg(clap::Arg::new("json").long("json")))
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = tempfile::tempdir().unwrap();
        let written = generate(Artifact::Completions, cmd, dir.path()).unwrap();
        assert_eq!(written.len(), 3);
        for path in written {
            let text = fs::read_to_string(&path).unwrap();
            assert!(text.contains("status"), "{}", path.display());
            assert!(text.contains("json"), "{}", path.display());
            assert!(!text.contains("secret"), "{}", path.display());
        }
    }
}
