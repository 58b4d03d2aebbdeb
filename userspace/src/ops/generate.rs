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
            let mut cmd = cmd;
            let name = cmd.get_name().to_owned();
            [Shell::Bash, Shell::Zsh, Shell::Fish]
                .into_iter()
                .map(|shell| clap_complete::generate_to(shell, &mut cmd, &name, dir))
                .collect()
        }
    }
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
