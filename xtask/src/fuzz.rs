//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (one per
//! decoder of outside bytes: the config file, ring-buffer events, kernel BTF,
//! mountinfo, small `/proc` and `/etc` files) for a bounded time each, and
//! fails with the saved input of any target that crashed or hung.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/TARGET`, read
//! only) and keeps what it learns in `fuzz/corpus/TARGET`; libFuzzer saves
//! failing inputs in `fuzz/artifacts/TARGET`. Both are git-ignored.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    proc::{self, say},
    setup,
};

/// What `cargo xtask fuzz` installs when `cargo fuzz` is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// One input running longer than this is a finding (libFuzzer's default is
/// 20 minutes, which would outlast any bounded run).
const INPUT_TIMEOUT_SECS: u64 = 10;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long to fuzz each target, in seconds.
    #[arg(long, default_value_t = 60, value_name = "N")]
    pub seconds: u64,
    /// Optimize every crate (cargo-fuzz's own default): a build about twice
    /// as long, for several times more inputs per second in long runs.
    #[arg(long)]
    pub release: bool,
    /// Targets to run (file names in fuzz/fuzz_targets/); all when omitted.
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    fuzz(args.seconds, args.release, &args.targets)
}

/// Builds the targets and fuzzes each for `seconds`.
pub fn fuzz(seconds: u64, release: bool, targets: &[String]) -> anyhow::Result<()> {
    let dir = fuzz_dir();
    let known = list_targets(&dir)?;
    let chosen: Vec<String> = if targets.is_empty() {
        known.iter().cloned().collect()
    } else {
        for target in targets {
            if !known.contains(target) {
                bail!(
                    "no fuzz target `{target}`; the targets are: {}",
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        targets.to_vec()
    };
    prerequisites()?;

    let start = Instant::now();
    let mut build = cargo_fuzz("build", release);
    if targets.len() == 1 {
        build.arg(&targets[0]);
    }
    proc::run(&mut build).context("building the fuzz targets failed")?;
    say!(
        "fuzz targets built in {:.0} s",
        start.elapsed().as_secs_f64()
    );

    let mut failures = Vec::new();
    for target in &chosen {
        say!("fuzzing {target} for {seconds} s ...");
        if let Err(err) = run_target(&dir, target, seconds, release) {
            say!("{target} FAILED: {err:#}");
            failures.push(format!("{err:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    say!(
        "fuzzing passed: {} target(s), {seconds} s each, {:.0} s in all",
        chosen.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    proc::workspace_root().join("fuzz")
}

/// The targets: one `fuzz/fuzz_targets/NAME.rs` each.
fn list_targets(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let sources = dir.join("fuzz_targets");
    let entries =
        fs::read_dir(&sources).with_context(|| format!("cannot list {}", sources.display()))?;
    let mut names = BTreeSet::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.insert(stem.to_string_lossy().into_owned());
        }
    }
    if names.is_empty() {
        bail!("no fuzz targets in {}", sources.display());
    }
    Ok(names)
}

/// The nightly toolchain (sanitizers are unstable), a C++ compiler for
/// libFuzzer itself, and cargo-fuzz.
fn prerequisites() -> anyhow::Result<()> {
    setup::ensure_nightly()?;
    if proc::which("c++").is_none() {
        bail!(
            "libfuzzer-sys builds libFuzzer with a C++ compiler and there is no `c++`: install one (`apt-get install g++`)"
        );
    }
    if proc::probe(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    say!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install; about a minute on two cores) ..."
    );
    proc::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// `cargo +nightly fuzz SUBCOMMAND` with the build options every call shares
/// (so `run` reuses what `build` made).
fn cargo_fuzz(subcommand: &str, release: bool) -> Command {
    let mut cmd = proc::cargo();
    cmd.args(["+nightly", "fuzz", subcommand, "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(proc::target_dir().join("fuzz"));
    // Unoptimized except for the crates the targets spend their time in (see
    // fuzz/Cargo.toml): about half the build of cargo-fuzz's default, which
    // optimizes every crate in one codegen unit.
    cmd.arg(if release { "--release" } else { "--dev" });
    cmd
}

/// Fuzzes one target; on failure, the error names the saved input.
fn run_target(dir: &Path, target: &str, seconds: u64, release: bool) -> anyhow::Result<()> {
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let artifacts = dir.join("artifacts").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    let before = files_in(&artifacts);

    let mut cmd = cargo_fuzz("run", release);
    cmd.arg(target).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"));
    let dict = dir.join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let line = proc::display(&cmd);
    say!("$ {line}");
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    // libFuzzer reports every new coverage point and function on its own
    // line: pass on the rest (start-up, the final tally, and everything
    // about a crash).
    let mut saved = None;
    let mut in_dictionary = false;
    if let Some(stderr) = child.stderr.take() {
        for out in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, path)) = out.split_once("Test unit written to ") {
                saved = Some(PathBuf::from(path.trim()));
            }
            if out.starts_with("###### Recommended dictionary") {
                in_dictionary = true;
            }
            let progress = (out.starts_with('#')
                && out[1..].starts_with(|c: char| c.is_ascii_digit()))
                || out.starts_with("\tNEW_FUNC");
            if !progress && !in_dictionary {
                eprintln!("{out}");
            }
            if out.starts_with("###### End of recommended dictionary") {
                in_dictionary = false;
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if status.success() {
        return Ok(());
    }
    let new: Vec<PathBuf> = files_in(&artifacts).difference(&before).cloned().collect();
    let inputs: Vec<PathBuf> = saved
        .into_iter()
        .chain(new)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match inputs.as_slice() {
        [] => bail!(
            "fuzz target {target} failed ({status}) without saving an input: see its output above"
        ),
        inputs => {
            let list: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "fuzz target {target} crashed or hung on {}; reproduce with `cargo +nightly fuzz run \
                 --fuzz-dir fuzz --target-dir {} {} {target} {}`",
                list.join(", "),
                proc::target_dir().join("fuzz").display(),
                if release { "--release" } else { "--dev" },
                list[0]
            )
        }
    }
}

fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}
