//! `bench-flood`, the reporting phase's load: connects at a fixed rate
//! from one process, to one address (one flow) or each to another
//! `127.1.x.y` (every connect a new flow).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

#[derive(clap::Args)]
pub struct FloodArgs {
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub seconds: f64,
    /// Connects per second offered (all threads together).
    #[arg(long)]
    pub rate: u64,
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Each connect to another 127.1.x.y address: every report a new flow.
    #[arg(long)]
    pub distinct: bool,
}

/// `bench-flood`: paced connects; prints `attempts=N refused=R elapsed_ns=T`.
pub fn flood(args: &FloodArgs) -> anyhow::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no other effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let duration = Duration::from_secs_f64(args.seconds);
    let per_thread = args.rate as f64 / f64::from(args.threads);
    let start = Instant::now();
    let threads: Vec<_> = (0..args.threads)
        .map(|t| {
            let (port, distinct) = (args.port, args.distinct);
            std::thread::spawn(move || {
                let (mut attempts, mut refused) = (0u64, 0u64);
                let mut addr = 0u32;
                while start.elapsed() < duration {
                    // Paced in steps of 64 connects.
                    let due = start + Duration::from_secs_f64(attempts as f64 / per_thread);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    for _ in 0..64 {
                        let ip = if distinct {
                            addr = addr.wrapping_add(1);
                            let a = (addr & 0x7fff) | (t << 15);
                            Ipv4Addr::new(127, 1, (a >> 8) as u8, a as u8)
                        } else {
                            Ipv4Addr::LOCALHOST
                        };
                        attempts += 1;
                        match TcpStream::connect(SocketAddr::from((ip, port))) {
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                refused += 1;
                            }
                            Err(_) => {}
                        }
                    }
                }
                (attempts, refused)
            })
        })
        .collect();
    let (mut attempts, mut refused) = (0, 0);
    for thread in threads {
        let (a, r) = thread.join().expect("a flood thread panicked");
        attempts += a;
        refused += r;
    }
    println!(
        "attempts={attempts} refused={refused} elapsed_ns={}",
        start.elapsed().as_nanos()
    );
    Ok(())
}
