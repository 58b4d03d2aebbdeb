//! loopwarden: refuses or reports TCP connects from tunnels and relays to
//! protected local ports, attributed in the kernel at connect time.
//!
//! Module map: [`config`] parses and validates the TOML policy file,
//! [`catalog`] holds the built-in tunnel rules, [`policy`] compiles a config
//! into map contents through a [`policy::Resolver`] ([`resolve`] is the real
//! one), [`kernel`] owns everything that touches BPF (host checks, BTF
//! offsets, loading, pinning, the typed maps; TCP sockets through
//! sock_diag), [`events`] turns ring-buffer records into audit lines
//! (and [`events::report`] summarises repeats and batches the lines),
//! [`cut`] destroys connections a newly enforced policy would have
//! refused, [`track`] seeds the kernel's relay tracking from `/proc`
//! at start, [`provenance`] reads the origins the kernel bound to
//! protected connections, [`run_socket`] binds the daemon's Unix sockets
//! (query, metrics) and `clients` keeps each local server's clients within
//! its places, and [`daemon`] ties them together. [`ops`] holds
//! `loopwarden status` (what the pins enforce right now) and `loopwarden
//! doctor` (what the host offers), and [`ops::generate`] renders the man
//! pages and shell completions from the command line's definitions.
//!
//! Fuzz builds (`cargo xtask fuzz`, `cfg(fuzzing)`) have no eBPF object
//! (see build.rs) and therefore leave out the loader, [`daemon`] and [`ops`].

pub mod catalog;
mod clients;
pub mod config;
pub mod cut;
#[cfg(not(fuzzing))]
pub mod daemon;
pub mod events;
pub mod fresh;
pub mod heap;
pub mod holder;
pub mod kernel;
#[cfg(not(fuzzing))]
pub mod ops;
pub mod policy;
pub mod provenance;
pub mod resolve;
pub mod run_file;
pub mod run_socket;
#[cfg(test)]
mod testing;
pub mod track;

/// An error and its causes on one line, `: `-separated, for a warning or a
/// report line (the `{:#}` of anyhow, for library errors).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How many problems a line of several says; the rest are counted.
pub const SHOWN_PROBLEMS: usize = 10;

/// Several errors on one line: the first `shown`, each with its causes,
/// `; ` between them, and the count of the rest (a file of thousands of
/// bad rules makes no line of megabytes).
pub struct Several<'a, E>(pub &'a [E], pub usize);

impl<E: std::error::Error> std::fmt::Display for Several<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Several(errors, shown) = *self;
        for (i, e) in errors.iter().take(shown).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&error_chain(e))?;
        }
        if errors.len() > shown {
            write!(f, "; and {} more", errors.len() - shown)?;
        }
        Ok(())
    }
}

/// CLOCK_MONOTONIC now: the clock of `bpf_ktime_get_ns()`, which times the
/// kernel's events and evidence.
pub fn monotonic() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Joins `thread` if it ends within `limit` (std has no join with a
/// deadline: its end is polled every 10 ms); whether it did. One that does
/// not is left running (a write blocked on a stalled reader).
pub fn join_within(thread: std::thread::JoinHandle<()>, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !thread.is_finished() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = thread.join();
    true
}
