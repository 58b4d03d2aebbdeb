//! Start-up: checks the host, takes the instance lock, reads and compiles
//! the policy, loads the programs against the pinned maps (or fresh ones),
//! installs the policy, makes the pinned links run the programs, and says
//! ready. Nothing in bpffs is changed until the policy has compiled and
//! the ident responder's addresses are bound (or found not there yet).

use std::{io, path::PathBuf, time::Instant};

use aya::maps::{MapData, RingBuf};
use loopwarden_common::{MAX_CONNS, maps};
use tokio::io::unix::AsyncFd;
use tracing::{error, info, warn};

use super::{
    DaemonError, InstanceLock, Options,
    getsockopt::{self, Getsockopt},
    host_addrs::host_addresses,
    installed::{Installed, Source, compile_policy},
    io_err,
    pinned_mode::{mode_word, pinned_judges_somewhere, pinned_mode, say_mode, weakening},
    resolving::Compiles,
    rings::{CounterReport, KernelLogger, watch},
    scope_file::ScopeFile,
    status_file,
    sweeper::Sweeper,
};
use crate::{
    events::{Enricher, report::Reporter, rule_file::RuleFile},
    kernel::{
        btf, compat,
        loader::{self, Programs, Takeover},
        lru,
        maps::{Counters, PolicyMaps, StatsMap, take_denials, take_events},
        pins::{PinDir, PinError, PinLock, PinState},
    },
    policy::{self, Mode, Netns},
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
    let host = compat::check_host(opts.host_cgroup_root.as_deref())?;
    let lock = InstanceLock::acquire(&opts.run_dir)?;
    // Inspecting creates nothing: a start that fails on its config leaves
    // no trace in bpffs.
    let pins = PinDir::new(&opts.pin_dir);
    let source = Source::pick(opts.config.as_deref());
    let read = source.read();
    // The capacity the config asks for; without a config, what is pinned
    // (adopted as it is) or the default.
    let mut conns = match &read {
        Ok(config) => config.provenance.connections,
        Err(_) => pins
            .max_entries(maps::CONNS)
            .map_or(MAX_CONNS, |made| lru::capacity(maps::CONNS, made)),
    };
    let shapes = loader::object_shapes(conns)?;
    // The pin directory's lock, if it exists, before what is pinned is
    // looked at: a `detach` or a daemon given another run directory cannot
    // change it between this look and the start's use of it.
    let held = pins.exists().then(|| pins.lock()).transpose()?;
    // `--replace` replaces what is pinned; with nothing pinned it is a
    // first start (and no error may speak of a predecessor's enforcement).
    let mut state = match pins.inspect(&shapes) {
        PinState::Absent => PinState::Absent,
        _ if opts.replace => PinState::Incompatible {
            why: "--replace was given".to_owned(),
        },
        found => found,
    };
    match &state {
        PinState::Incompatible { why } => warn!(
            "the pinned objects will be replaced: {why}; reports the old programs queued and \
             not yet read, and losses they counted since the last report, are not carried over \
             (their layout may differ)"
        ),
        PinState::Resized {
            map,
            pinned,
            wanted,
        } => info!(
            "{map} holds {} entries and [provenance] connections asks for {}: it is replaced \
             alone, its entries copied over",
            lru::capacity(map, *pinned),
            lru::capacity(map, *wanted)
        ),
        PinState::Absent | PinState::Compatible => {}
    }

    let offsets = btf::kernel_offsets(&host.btf_path)?;
    if offsets.btrfs_inode_vfs != 0 {
        info!(
            "btrfs subvolumes are told apart: an executable on btrfs is known by its \
             subvolume's device (btrfs_inode.vfs_inode at {}, .root at {}, btrfs_root.anon_dev \
             at {})",
            offsets.btrfs_inode_vfs, offsets.btrfs_inode_root, offsets.btrfs_root_anon_dev
        );
    }
    let resolver = HostResolver::new(host.cgroup2_root.clone())
        .with_btrfs_subvolumes(offsets.btrfs_inode_vfs != 0);
    // A policy that does not parse or compile (one past the rules' or the
    // maps' limits): enforcement already pinned by a predecessor of this
    // layout stays in force and this daemon reports for it until a reload
    // brings a good file; with nothing to keep, the daemon exits (exit code
    // EX_CONFIG, which the unit does not restart).
    //
    // A namespace the pinned policy kept in its scope after its name went
    // stays in this one's: a start resolves the names as they are.
    let kept = ScopeFile::pinned(&opts.run_dir, &pins).load();
    let weakened = read
        .as_ref()
        .ok()
        .and_then(|config| weakening(&source, config, opts.mode, &pins, &state));
    // A start refused for a default file that is gone stands for that
    // file: a SIGHUP while it is still gone is refused as such.
    let reload_source = match (&weakened, &source) {
        (Some(_), Source::Embedded) => {
            Source::File(PathBuf::from(crate::config::DEFAULT_CONFIG_PATH))
        }
        _ => source.clone(),
    };
    let compiled = read.map_err(DaemonError::from).and_then(|config| {
        if let Some((what, pinned, fix)) = weakened {
            return Err(DaemonError::WouldWeaken { what, pinned, fix });
        }
        let before = (!kept.is_empty()).then(|| policy::predecessor_scope(&config, kept.clone()));
        let policy = compile_policy(&config, &resolver, opts.mode, before.as_ref(), false)?;
        if policy.reload_refusal().is_some() && pinned_judges_somewhere(&pins, &state, &kept) {
            for warning in &policy.warnings {
                warn!("{warning}");
            }
            return Err(DaemonError::ScopedToNothing);
        }
        Ok((config, policy))
    });
    // Why the start's file is not in force, for `status` and the metrics
    // (as a failed reload is): the pinned policy it keeps is no file's.
    let mut unread: Option<String> = None;
    let (config, policy) = match compiled {
        Ok((config, policy)) => (Some(config), Some(policy)),
        Err(e) if matches!(state, PinState::Compatible | PinState::Resized { .. }) => {
            // A file that asks for another capacity and does not compile
            // resizes nothing: the pinned set is adopted as it is.
            if let PinState::Resized { map, pinned, .. } = state {
                conns = lru::capacity(map, pinned);
                state = PinState::Compatible;
            }
            error!(
                "{}; the policy pinned by the previous daemon stays in force until a reload \
                 (SIGHUP) reads a valid file; its [ident] responder starts then, its [metrics] \
                 listen address at a restart (metrics.sock serves meanwhile)",
                crate::error_chain(&e)
            );
            unread = Some(crate::error_chain(&e));
            (None, None)
        }
        Err(e) if matches!(state, PinState::Incompatible { .. }) => {
            error!(
                "{}; the previously pinned programs keep enforcing their policy, unreported, \
                 until a daemon starts with a valid file (or `loopwarden detach`)",
                crate::error_chain(&e)
            );
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let Some(policy) = &policy {
        for warning in &policy.warnings {
            warn!("{warning}");
        }
    }
    // The RFC 1413 responder's addresses (`[ident] listen`), bound before
    // the programs load: one that cannot be bound stops the start with
    // nothing changed, unless time may mend it (an address not configured
    // yet): enforcement does not wait for the network, the responder does.
    let (ident, ident_error) = match config
        .as_ref()
        .filter(|c| !c.ident.listen.is_empty())
        .map(crate::provenance::ident::bind)
        .transpose()
    {
        Ok(bound) => (bound, None),
        Err(e) if e.may_mend_itself() => {
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
    let mut undo = Undo {
        pins: &pins,
        lock: &pin_lock,
        first: state == PinState::Absent,
        policy_before: None,
        scope_before: None,
    };
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
    if matches!(state, PinState::Compatible | PinState::Resized { .. })
        && let Ok((_, settings)) = policy_maps.in_force()
    {
        for (seq, rules) in rule_file.load(settings.seq) {
            enricher.set_rules(seq, rules);
        }
    }
    enricher.keep_rules_in(rule_file);
    // Installed before the programs take over the links, so the first
    // connect they judge is judged by this policy.
    let mut scope_file = ScopeFile::new(&opts.run_dir, pins.root(), policy_maps.id());
    // Listed once: the sweeper cuts by, and a refresh compares against,
    // the very addresses installed (an address that came up in between is
    // then new to the next refresh, which installs it). A start has none
    // in force to keep when listing fails for a while: it asks again,
    // briefly, before it installs none until the next re-resolution.
    let addrs = policy
        .as_ref()
        .and_then(|policy| {
            (0..3).find_map(|attempt| {
                if attempt > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                host_addresses(policy)
            })
        })
        .unwrap_or_default();
    let adopted = matches!(state, PinState::Compatible | PinState::Resized { .. });
    let installed_seq = match &policy {
        Some(policy) => {
            if adopted {
                // Into the maps the running programs read: in force at
                // once, so put back should this start fail before it is
                // whole (the slot in force now is not written).
                undo.policy_before = policy_maps
                    .in_force()
                    .ok()
                    .map(|(generation, _)| (generation, pins.meta().map(|m| m.mode).ok()));
                // The scope file speaks for the policy in force: put back
                // with it.
                let before = ScopeFile::new(&opts.run_dir, pins.root(), policy_maps.id());
                let netns = before.load();
                undo.scope_before = Some((before, netns));
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
                scope_file.save(&policy.netns);
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
    if !adopted && let Some(policy) = &policy {
        scope_file.save(&policy.netns);
    }
    let getsockopt = Getsockopt::started(getsockopt.as_ref());
    if let Some(old) = resized {
        let carried = match (old, programs.ebpf.map_mut(maps::CONNS)) {
            (Ok(old), Some(new)) => old.copy_into(new).map_err(|e| crate::error_chain(&e)),
            (Err(e), _) => Err(crate::error_chain(&e)),
            (_, None) => Err(format!("our object has no {}", maps::CONNS)),
        };
        match carried {
            Ok(n) => info!("{} resized: {n} entries copied over", maps::CONNS),
            Err(e) => warn!(
                "copying the connections' origins into the resized {} failed: {e}; the \
                 connections open now are \"unknown\"",
                maps::CONNS
            ),
        }
    }
    // What an earlier daemon already reported stays reported; drops since
    // (e.g. while no daemon was reading) are reported now. (Replaced maps
    // start from zero on both sides.)
    let dropped_reported = match (&state, pins.meta()) {
        (PinState::Compatible | PinState::Resized { .. }, Ok(meta)) => meta.dropped_reported,
        _ => 0,
    };
    let dropped_by_verdict = stats.drops_reported().unwrap_or_else(|e| {
        warn!("reading LW_DROPS_REPORTED failed: {e}");
        Default::default()
    });
    // With the mode in force now (this daemon's policy, or the pinned one
    // it kept), read back from the settings: one write.
    let mode = mode_word(pinned_mode(&pins));
    // The programs are in force by now: a failed write is said, not a
    // failed start (which the next start, finding no mark, would take for
    // an interrupted one and replace everything again).
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
    info!(
        "ready: {}, {} from {}, cgroup {}, pinned in {} (kernel {}); {}; in force {} ms after start",
        match (&policy, &config) {
            (Some(p), Some(c)) if p.mode != c.mode => format!(
                "{} mode (--mode; the file says {}), {} rules",
                p.mode,
                c.mode,
                p.rules.len()
            ),
            (Some(p), _) => format!("{} mode, {} rules", p.mode, p.rules.len()),
            (None, _) => "the pinned policy".to_owned(),
        },
        match installed_seq {
            Some(seq) => format!("policy #{seq}"),
            None => "no new policy".to_owned(),
        },
        source.describe(),
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
        predecessor,
        addrs,
        policy,
        maps: policy_maps,
        pins: pins.clone(),
        refresh_error: None,
        sweeper,
        scope_file,
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
    // Past the last step that can fail: a sweep never cuts by a policy a
    // failed start puts back.
    if let Some(policy) = &installed.policy {
        installed.sweeper.request(policy, &installed.addrs);
    }
    undo.scope_before = None;
    std::mem::forget(undo);
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

/// What a start that fails past [`PinDir::prepare`] undoes, when dropped
/// (forgotten once the start has succeeded): a first start (nothing was
/// pinned before it) removes every pin it made, its links detached first,
/// so no program it attached goes on enforcing or tracking without a
/// daemon; a replacement removes the maps it staged and did not promote
/// (the old programs go on with the maps they were given, see
/// [`Programs::attach_pinned`]).
struct Undo<'a> {
    pins: &'a PinDir,
    /// Proof that the pin directory's lock is held while this removes.
    lock: &'a PinLock,
    first: bool,
    /// `LW_GENERATION` and `LW_META`'s mode word as they were before this
    /// start installed its policy into adopted maps, which the programs
    /// already running read: put back, so a failed start leaves the policy
    /// before it in force, as it found it. (Tracking programs it attached
    /// in place of the pinned ones stay: the same layout's, whose maps
    /// they share.)
    policy_before: Option<(u32, Option<u32>)>,
    /// The scope file of the adopted maps, and the namespaces it held
    /// before this start saved its policy's: written back with the policy
    /// before.
    scope_before: Option<(ScopeFile, Vec<Netns>)>,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some((generation, mode)) = self.policy_before {
            let put_back = self
                .pins
                .set_generation(generation)
                .and_then(|()| match mode {
                    Some(mode) => self.pins.update_meta(|m| m.mode = mode),
                    None => Ok(()),
                });
            if let Some((file, netns)) = &mut self.scope_before {
                file.save(netns);
            }
            match put_back {
                Ok(()) => warn!("the start failed: the policy in force before it is put back"),
                Err(e) => error!(
                    "the start failed after installing its policy, and putting back the one \
                     before failed: {e}; the new policy stays in force (`loopwarden status` \
                     shows it)"
                ),
            }
        }
        if self.first {
            match self.pins.remove_all_held(self.lock) {
                Ok(removed) => warn!(
                    "the start failed: the {} pins of loopwarden's are removed (no policy was \
                     pinned before it)",
                    removed.pins.len()
                ),
                Err(e) => error!(
                    "the start failed, and removing the pins it made failed too: {}; \
                     `loopwarden detach --pin-dir {}` removes them",
                    crate::error_chain(&e),
                    self.pins.root().display()
                ),
            }
            return;
        }
        let staging = self.pins.staging();
        if let Err(e) = self.pins.remove_staging()
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(
                "removing the maps this failed start staged in {} failed: {e}; the next start \
                 removes them",
                staging.display()
            );
        }
    }
}

/// What start-up found pinned and did about it, for the ready line.
fn describe_start(state: &PinState, takeover: Takeover) -> String {
    // A link attached anew (a program the pinned set did not have) does
    // not hide what was done to the rest.
    let anew = match takeover {
        Takeover::Updated => "",
        Takeover::Attached => "; links attached and pinned where none was",
    };
    match state {
        PinState::Absent => "attached and pinned".to_owned(),
        PinState::Compatible => format!(
            "adopted the pinned maps; the pinned links now run this daemon's programs{anew}"
        ),
        PinState::Resized { map, wanted, .. } => format!(
            "adopted the pinned maps but {map}, resized to {}; the pinned links now run this \
             daemon's programs{anew}",
            lru::capacity(map, *wanted)
        ),
        PinState::Incompatible { why } => {
            format!("replaced the pinned programs in place and their maps ({why}){anew}")
        }
    }
}
