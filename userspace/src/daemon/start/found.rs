//! What a start finds before it changes anything: the host, its config
//! file (read, not compiled yet), and what a predecessor left pinned.

use std::collections::HashMap;

use loopwarden_common::{MAX_CONNS, maps};
use tracing::{info, warn};

use crate::{
    config::{Config, ConfigError},
    daemon::{DaemonError, InstanceLock, Options, installed::Source},
    kernel::{
        compat::{self, Host},
        loader, lru,
        pins::{MapShape, PinDir, PinLock, PinState},
    },
};

/// What a start found.
pub(super) struct Found {
    pub(super) host: Host,
    pub(super) pins: PinDir,
    /// Where the policy comes from: the file given, the default file, or
    /// the embedded default.
    pub(super) source: Source,
    /// The capacity of `LW_CONNS` this start makes or adopts: what the
    /// config asks for; without a config, what is pinned (adopted as it
    /// is) or the default.
    pub(super) conns: u32,
    /// The maps' shapes at that capacity, what is pinned is told against.
    pub(super) shapes: HashMap<String, MapShape>,
    /// The pin directory's lock, taken if the directory existed.
    pub(super) held: Option<PinLock>,
    pub(super) state: PinState,
    /// Declared last, so dropped last (a start that fails before it takes
    /// what it found apart): a daemon started next finds the pin
    /// directory's lock free once it holds this one.
    pub(super) lock: InstanceLock,
}

impl Found {
    /// Looks, and reads the config. Inspecting creates nothing: a start
    /// that fails on its config leaves no trace in bpffs.
    pub(super) fn look(opts: &Options) -> Result<(Self, Result<Config, ConfigError>), DaemonError> {
        let host = compat::check_host(opts.host_cgroup_root.as_deref())?;
        let lock = InstanceLock::acquire(&opts.run_dir)?;
        let pins = PinDir::new(&opts.pin_dir);
        let source = Source::pick(opts.config.as_deref());
        let read = source.read();
        let conns = match &read {
            Ok(config) => config.provenance.connections,
            Err(_) => pins
                .max_entries(maps::CONNS)
                .map_or(MAX_CONNS, |made| lru::capacity(maps::CONNS, made)),
        };
        let shapes = loader::object_shapes(conns)?;
        // The pin directory's lock, if it exists, before what is pinned is
        // looked at: a `detach` or a daemon given another run directory
        // cannot change it between this look and the start's use of it.
        let held = pins.exists().then(|| pins.lock()).transpose()?;
        // `--replace` replaces what is pinned; with nothing pinned it is a
        // first start (and no error may speak of a predecessor's
        // enforcement).
        let state = match pins.inspect(&shapes) {
            PinState::Absent => PinState::Absent,
            _ if opts.replace => PinState::Incompatible {
                why: "--replace was given".to_owned(),
            },
            found => found,
        };
        say_state(&state);
        let found = Found {
            host,
            lock,
            pins,
            source,
            conns,
            shapes,
            held,
            state,
        };
        Ok((found, read))
    }

    /// Whether this start adopts the pinned maps (all, or all but a
    /// resized one), which the running programs read.
    pub(super) fn adopts(&self) -> bool {
        matches!(self.state, PinState::Compatible | PinState::Resized { .. })
    }
}

/// What the start will do to the pinned objects, when it is more than
/// adopting them.
fn say_state(state: &PinState) {
    match state {
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
}
