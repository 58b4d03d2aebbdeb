//! `cargo xtask`: installs the toolchain pieces loopwarden needs, builds and
//! runs the daemon, runs the full test suite and benchmarks the kernel hooks.
//!
//! Every subcommand is idempotent and says what it is doing before it does it.

mod bench;
mod daemon;
mod dist;
mod fuzz;
mod proc;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "loopwarden developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install whatever is missing: rust-src for nightly, bpf-linker, and
    /// with --tests the packages the integration tests and bench use.
    Setup(setup::SetupArgs),
    /// Build the daemon (and its embedded eBPF object).
    Build(daemon::BuildArgs),
    /// Build the daemon and run it as root: `cargo xtask run -- [ARGS]`.
    Run(daemon::RunArgs),
    /// Build the release binary and a Debian package of it in target/dist/
    /// (binary, unit, commented audit-mode config, man pages, completions).
    Dist(dist::DistArgs),
    /// Formatting, clippy, unit tests, a short fuzz run and the root
    /// integration tests.
    Test(test::TestArgs),
    /// Run the cargo-fuzz targets in fuzz/ for a bounded time each
    /// (installs cargo-fuzz if missing); fails with any crashing input.
    Fuzz(fuzz::FuzzArgs),
    /// Connect rates and per-program BPF cost: daemon absent vs audit vs enforce.
    Bench(bench::BenchArgs),
    /// Boot Debian's stock 6.1/6.12 kernels under QEMU and check the release
    /// binary loads, attaches and enforces there.
    VmTest(vm::VmTestArgs),
    /// Bench helper: accept and immediately close on each port (runs inside the bench netns).
    #[command(hide = true)]
    BenchServer(bench::load::ServerArgs),
    /// Bench helper: connect+close in a loop for a while, print the count.
    #[command(hide = true)]
    BenchClient(bench::load::ClientArgs),
    /// Bench helper: receive a TCP stream or UDP datagrams, print the count.
    #[command(hide = true)]
    BenchReceive(bench::load::ReceiveArgs),
    /// Bench helper: send a TCP stream or UDP datagrams as fast as possible.
    #[command(hide = true)]
    BenchSend(bench::load::SendArgs),
    /// Bench helper: spawn a program in a loop for a while, print the count.
    #[command(hide = true)]
    BenchSpawn(bench::load::SpawnArgs),
    /// Bench helper: getsockopt(SO_RCVBUF) in a loop for a while, print the count.
    #[command(hide = true)]
    BenchGetsockopt(bench::load::GetsockoptArgs),
    /// Bench helper: socket()+bind(0.0.0.0:0)+close() in a loop, print the count.
    #[command(hide = true)]
    BenchBind(bench::load::BindArgs),
    /// Bench helper: connects at a fixed rate to a port nothing listens on.
    #[command(hide = true)]
    BenchFlood(bench::reporting::FloodArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::Build(args) => daemon::build_cmd(&args),
        Command::Run(args) => daemon::run_cmd(&args),
        Command::Dist(args) => dist::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::VmTest(args) => vm::run(&args),
        Command::BenchServer(args) => bench::load::server(&args),
        Command::BenchClient(args) => bench::load::client(&args),
        Command::BenchReceive(args) => bench::load::receive(&args),
        Command::BenchSend(args) => bench::load::send(&args),
        Command::BenchSpawn(args) => bench::load::spawn(&args),
        Command::BenchGetsockopt(args) => bench::load::getsockopt(&args),
        Command::BenchBind(args) => bench::load::bind(&args),
        Command::BenchFlood(args) => bench::reporting::flood(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
