//! Start-up: checks the host, takes the instance lock, reads and compiles
//! the policy, loads the programs against the pinned maps (or fresh ones),
//! installs the policy, makes the pinned links run the programs, and says
//! ready. Nothing in bpffs is changed until the policy has compiled and
//! the ident responder's addresses are bound (or found not there yet).

mod choose;
mod found;
mod ready;
mod undo;

use std::{io, net::IpAddr, path::PathBuf, time::Instant};

use aya::maps::{MapData, RingBuf};
use loopwarden_common::maps;
use tokio::io::unix::AsyncFd;
use tracing::{error, info, warn};

use self::{
    choose::{Chosen, choose},
    found::Found,
    ready::{describe_policy, describe_start},
    undo::Undo,
};
use super::{
    DaemonError, InstanceLock, Options,
    getsockopt::{self, Getsockopt},
    host_addrs::host_addresses,
    installed::Installed,
    io_err,
    kept_config::KeptConfig,
    pinned_mode::{mode_word, pinned_mode, say_mode},
    resolving::Compiles,
    rings::{CounterReport, KernelLogger, watch},
    scope_file::ScopeFile,
    status_file,
    sweeper::Sweeper,
};
use crate::{
    events::{Enricher, report::Reporter, rule_file::RuleFile},
    kernel::{
        btf,
        loader::Programs,
        maps::{Counters, PolicyMaps, StatsMap, take_denials, take_events},
        pins::{PinDir, PinError, PinLock, PinState},
    },
    policy::{self, CompiledPolicy, Mode},
    provenance::Conns,
    resolve::HostResolver,
};

/// A started daemon: what its event loop works with, and the locks and
/// the loaded object it holds until it exits.
pub(super) struct Running {
    pub(super) installed: Installed,
    pub(super) reporter: Reporter,
    pub(super) counters: CounterReport,
    pub(super) stats: StatsMap,
    pub(super) events: AsyncFd<RingBuf<MapData>>,
    pub(super) denials: AsyncFd<RingBuf<MapData>>,
    pub(super) logger: Option<AsyncFd<KernelLogger>>,
    pub(super) pins: PinDir,
    /// Where the getsockopt program answers, followed at each refresh.
    pub(super) getsockopt: Getsockopt,
    /// The thread the policy is compiled on after start.
    pub(super) compiles: Compiles,
    /// The host's cgroup v2 root.
    pub(super) cgroup_root: PathBuf,
    // Dropped last, in this order: the loaded object (its links and maps
    // are pinned), the pin directory's lock, then the instance lock, so a
    // daemon started next finds both free once it holds the first.
    pub(super) programs: Programs,
    _pin_lock: PinLock,
    _lock: InstanceLock,
}

/// Starts the daemon, up to and including the ready line and the sweeper.
pub(super) fn start(opts: &Options, started: Instant) -> Result<Running, DaemonError> {
    let (mut found, read) = Found::look(opts)?;
    let offsets = btf::kernel_offsets(&found.host.btf_path)?;
    if offsets.btrfs_inode_vfs != 0 {
        info!(
            "btrfs subvolumes are told apart: an executable on btrfs is known by its \
             subvolume's device (btrfs_inode.vfs_inode at {}, .root at {}, btrfs_root.anon_dev \
             at {})",
            offsets.btrfs_inode_vfs, offsets.btrfs_inode_root, offsets.btrfs_root_anon_dev
        );
    }
    let resolver = HostResolver::new(found.host.cgroup2_root.clone())
        .with_btrfs_subvolumes(offsets.btrfs_inode_vfs != 0);
    let Chosen {
        config,
        policy,
        kept_config,
        unread,
        reload_source,
        kept,
    } = choose(opts, &mut found, read, &resolver)?;
    let adopted = found.adopts();
    let Found {
        host,
        lock,
        pins,
        source,
        conns,
        shapes,
        held,
        state,
    } = found;
    // The RFC 1413 responder's addresses (`[ident] listen`), bound before
    // the programs load: one that cannot be bound stops the start with
    // nothing changed, unless time may mend it (an address not configured
    // yet): enforcement does not wait for the network, the responder does.
    // (Nor does the start keep a predecessor's config for a responder it
    // cannot bind: tried again every second.)
    let (ident, ident_error) = match config
        .as_ref()
        .filter(|c| !c.ident.listen.is_empty())
        .map(crate::provenance::ident::bind)
        .transpose()
    {
        Ok(bound) => (bound, None),
        Err(e) if e.may_mend_itself() || kept_config => {
            let message = crate::error_chain(&e);
            error!(
                "{message}; the daemon starts without its ident responder, which starts once it \
                 can be bound (tried every second)"
            );
            (None, Some(message))
        }
        Err(e) => return Err(DaemonError::Ident(e)),
    };

    let locked_before = held.is_some();
    let pin_lock = pins.prepare(held)?;
    // With no directory to lock when it looked, another daemon may have
    // pinned a set and gone since: this start is then no first start.
    if !locked_before && state == PinState::Absent && pins.inspect(&shapes) != PinState::Absent {
        return Err(PinError::PinnedSince {
            path: pins.root().to_owned(),
        }
        .into());
    }
    let mut undo = Undo::new(&pins, &pin_lock, state == PinState::Absent);
    let mut programs = Programs::load_pinned(&offsets, &pins, &state, conns)?;
    let mut policy_maps = PolicyMaps::take(&mut programs.ebpf)?;
    let mut stats = StatsMap::take(&mut programs.ebpf)?;
    let ring = take_events(&mut programs.ebpf)?;
    let denials = take_denials(&mut programs.ebpf)?;
    let logger = match aya_log::EbpfLogger::init(&mut programs.ebpf) {
        Ok(logger) => Some(watch(logger, "watching the kernel log buffer")?),
        Err(e) => {
            warn!(
                "kernel program diagnostics unavailable: {}",
                crate::error_chain(&e)
            );
            None
        }
    };
    let mut enricher = Enricher::new(host.cgroup2_root.clone());
    // The rule names of the policies a predecessor installed in these
    // pins, for the reports it left queued and the origins of connections
    // opened before: up to the one in force (pins made afresh have none).
    let rule_file = RuleFile::new(&opts.run_dir, pins.root(), policy_maps.id());
    if adopted && let Ok((_, settings)) = policy_maps.in_force() {
        for (seq, rules) in rule_file.load(settings.seq) {
            enricher.set_rules(seq, rules);
        }
    }
    enricher.keep_rules_in(rule_file);
    // Installed before the programs take over the links, so the first
    // connect they judge is judged by this policy.
    let mut scope_file = ScopeFile::new(&opts.run_dir, pins.root(), policy_maps.id());
    let mut config_file = KeptConfig::new(&opts.run_dir, pins.root(), policy_maps.id());
    // What a start that has a policy (and so its config) keeps for the
    // next daemon, as of install `seq`.
    let mut keep = |policy: &CompiledPolicy, seq: u64| {
        scope_file.save(&policy.netns);
        if let Some(config) = &config {
            config_file.save(seq, policy.mode, config);
        }
    };
    let addrs = policy.as_ref().map(listed_addresses).unwrap_or_default();
    let installed_seq = match &policy {
        Some(policy) => {
            if adopted {
                undo.keep_before(&policy_maps, &opts.run_dir);
            }
            // Into the pinned maps (not staged ones): said enforcing
            // before it is (see `Installed::install`).
            if policy.mode == Mode::Enforce && adopted {
                say_mode(&pins, Some(Mode::Enforce));
            }
            let seq = policy_maps.install(policy, &addrs)?;
            enricher.set_rules(seq, policy.named_rules());
            // Replacing maps, the file still speaks for the ones in force
            // until the new ones are pinned in their place (below): a
            // replacement that fails, or is killed, before leaves it to
            // them, so the next start keeps what they keep.
            if adopted {
                keep(policy, seq);
            }
            Some(seq)
        }
        None => None,
    };
    let getsockopt = config.as_ref().map(|c| getsockopt::targets(c, &resolver));
    // A resized `LW_CONNS`: the one pinned now is opened before the
    // takeover unpins it, and its connections copied into ours after it
    // (once no program of the old set writes it any more).
    let resized = match &state {
        PinState::Resized { .. } => Some(crate::provenance::Conns::open(&pins.maps_dir())),
        _ => None,
    };
    // With the tracking programs running (attached before the connect
    // programs take over), what happened before they did (listeners,
    // accepted connections, interpreters' scripts) is read from /proc:
    // from then on nothing is missed between the two.
    let getsockopt_dirs = getsockopt.as_ref().map(|t| t.dirs.as_slice());
    let (takeover, unnamed) =
        programs.attach_pinned(&host.cgroup2_root, &pins, getsockopt_dirs, |ebpf| {
            crate::track::seed(ebpf, policy.as_ref());
        })?;
    if !adopted && let (Some(policy), Some(seq)) = (&policy, installed_seq) {
        keep(policy, seq);
    }
    let getsockopt = Getsockopt::started(getsockopt.as_ref());
    if let Some(old) = resized {
        carry_over(old, &mut programs);
    }
    let dropped_reported = mark_started(&pins, adopted);
    let dropped_by_verdict = stats.drops_reported().unwrap_or_else(|e| {
        warn!("reading LW_DROPS_REPORTED failed: {e}");
        Default::default()
    });
    // The RFC 1413 responder, bound before anything was loaded.
    if let Some(bound) = ident {
        let serving = bound
            .serve(&pins.maps_dir())
            .map_err(|e| io_err("starting the ident responder")(io::Error::other(e)))?;
        info!("ident (RFC 1413): answering on {serving}");
    }
    // The heap the start-up needed (policy compilation, object parsing) is
    // not needed again.
    crate::heap::release();
    // Said once `status.json` is written (below): a `status` run on the
    // ready line finds what this daemon reports.
    let ready = format!(
        "ready: {}, {} from {}, cgroup {}, pinned in {} (kernel {}); {}; in force {} ms after start",
        describe_policy(policy.as_ref(), config.as_ref()),
        match installed_seq {
            Some(seq) => format!("policy #{seq}"),
            None => "no new policy".to_owned(),
        },
        match (&config, kept_config) {
            (Some(config), true) => config.source.clone(),
            _ => source.describe(),
        },
        host.cgroup2_root.display(),
        pins.root().display(),
        host.kernel_release,
        describe_start(&state, takeover),
        started.elapsed().as_millis(),
    );

    // Cuts what a previous policy, an audit mode or no daemon at all let
    // in (asked once the start is whole, below).
    let sweeper = Sweeper::spawn(host.cgroup2_root.clone(), pins.maps_dir(), opts.log_format)
        .map_err(io_err("starting the connection sweeper"))?;
    super::fullness::watch(pins.clone()).map_err(io_err(
        "starting the tracking upkeep (listeners credited anew, connection slots given back, \
         map fullness)",
    ))?;
    let events = watch(ring, "watching the event ring buffer")?;
    let denials = watch(denials, "watching the refusals' ring buffer")?;
    let reporter = Reporter::new(enricher, opts.log_format, opts.repeat_interval);
    let mut started = config
        .clone()
        .unwrap_or_else(crate::config::Config::embedded_default);
    // The capacity made or adopted, which a file that did not compile
    // does not name: what a reload's `connections` is told against.
    started.provenance.connections = conns;
    // Keeping a predecessor's policy (this file did not compile), the
    // scope it had is what the first good reload keeps namespaces from.
    let predecessor =
        (policy.is_none() && !kept.is_empty()).then(|| policy::predecessor_scope(&started, kept));
    let compiles = Compiles::spawn(resolver.clone(), opts.mode)
        .map_err(io_err("starting the policy's resolving thread"))?;
    let ident_pending = config.is_none() || ident_error.is_some();
    let installed = Installed {
        source: reload_source,
        config_arg: opts.config.clone(),
        resolver,
        started,
        config,
        kept: kept_config,
        predecessor,
        addrs,
        policy,
        maps: policy_maps,
        pins: pins.clone(),
        refresh_error: None,
        sweeper,
        scope_file,
        kept_config: config_file,
        ident_pending,
        ident_error,
    };
    let mut counters = CounterReport {
        pins: pins.clone(),
        last: Counters {
            dropped: dropped_reported,
            dropped_by_verdict,
            // Races happen only under a daemon's installs, and that daemon
            // reported them: not again at each start.
            raced: stats.read().map_or(0, |now| now.raced),
            ..Counters::default()
        },
    };
    counters.report(&mut stats);
    status_file::started(&opts.run_dir, &opts.pin_dir, &installed, unread);
    info!("{ready}");
    // Past the last step that can fail: a sweep never cuts by a policy a
    // failed start puts back.
    if let Some(policy) = &installed.policy {
        installed.sweeper.request(policy, &installed.addrs);
    }
    undo.disarm();
    unnamed.remove();
    Ok(Running {
        cgroup_root: host.cgroup2_root,
        installed,
        reporter,
        counters,
        stats,
        events,
        denials,
        logger,
        pins,
        getsockopt,
        compiles,
        programs,
        _pin_lock: pin_lock,
        _lock: lock,
    })
}

/// The addresses of the host a policy with `host_addresses` judges
/// connects to, listed once: the sweeper cuts by, and a refresh compares
/// against, the very addresses installed (an address that came up in
/// between is then new to the next refresh, which installs it). A start
/// has none in force to keep when listing fails for a while: it asks
/// again, briefly, before it installs none until the next re-resolution.
fn listed_addresses(policy: &CompiledPolicy) -> Vec<IpAddr> {
    (0..3)
        .find_map(|attempt| {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            host_addresses(policy)
        })
        .unwrap_or_default()
}

/// Copies the connections' origins of the resized `LW_CONNS` pinned
/// before, `old`, into the programs' own (once no program of the old set
/// writes it any more).
fn carry_over(old: Result<Conns, impl std::error::Error>, programs: &mut Programs) {
    let carried = match (old, programs.ebpf.map_mut(maps::CONNS)) {
        (Ok(old), Some(new)) => old.copy_into(new).map_err(|e| crate::error_chain(&e)),
        (Err(e), _) => Err(crate::error_chain(&e)),
        (_, None) => Err(format!("our object has no {}", maps::CONNS)),
    };
    match carried {
        Ok(n) => info!("{} resized: {n} entries copied over", maps::CONNS),
        Err(e) => warn!(
            "copying the connections' origins into the resized {} failed: {e}; the connections \
             open now are \"unknown\"",
            maps::CONNS
        ),
    }
}

/// Writes into `LW_META` what this start put in force: the mode (this
/// daemon's policy's, or the pinned one's it kept, read back from the
/// settings), and the drops reported so far. What an earlier daemon
/// already reported stays reported (`adopted` maps); drops since (e.g.
/// while no daemon was reading) are reported now. (Replaced maps start
/// from zero on both sides.) Returns those drops.
///
/// The programs are in force by now: a failed write is said, not a failed
/// start (which the next start, finding no mark, would take for an
/// interrupted one and replace everything again).
fn mark_started(pins: &PinDir, adopted: bool) -> u64 {
    let dropped_reported = match (adopted, pins.meta()) {
        (true, Ok(meta)) => meta.dropped_reported,
        _ => 0,
    };
    let mode = mode_word(pinned_mode(pins));
    if let Err(e) = pins.update_meta(|m| {
        m.dropped_reported = dropped_reported;
        m.mode = mode;
    }) {
        warn!(
            "writing {} failed: {e}; `loopwarden status` may show the mode before this start, \
             and a start after this one may take the maps for an interrupted start's and replace \
             them",
            maps::META
        );
    }
    dropped_reported
}
