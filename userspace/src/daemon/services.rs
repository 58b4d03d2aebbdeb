//! The daemon's sockets for other programs: the query socket
//! (`[provenance] query`) and the Prometheus metrics (`[metrics]`, read at
//! start). Each is removed when its handle is dropped, as the daemon exits;
//! one that cannot start is reported and the daemon runs without it.

use std::{
    path::Path,
    time::{Instant, SystemTime},
};

use tracing::{error, info};

use super::start::Running;
use crate::{
    ops::metrics::{self, MetricsServer},
    provenance::query::{self, QueryServer},
};

impl Running {
    /// The query socket, if the policy asks for one (or, started on a bad
    /// file, if the defaults do).
    pub(super) fn query_socket(&mut self, run_dir: &Path) -> Option<QueryServer> {
        self.installed
            .config
            .as_ref()
            .map_or(
                crate::config::Config::embedded_default().provenance.query,
                |c| c.provenance.query,
            )
            .then(|| {
                query::serve(
                    run_dir,
                    self.pins.maps_dir(),
                    self.cgroup_root.clone(),
                    self.reporter.enricher().shared_rules(),
                )
                .inspect_err(|e| error!("the query socket is off: {}", crate::error_chain(e)))
                .ok()
            })
            .flatten()
    }

    /// The metrics endpoints; `started` is when the daemon started.
    pub(super) fn metrics(&self, run_dir: &Path, started: Instant) -> Option<MetricsServer> {
        let config = self.installed.config.as_ref().map_or_else(
            || crate::config::Config::embedded_default().metrics,
            |c| c.metrics.clone(),
        );
        let sources = metrics::Sources {
            pins: self.pins.clone(),
            reported: self.reporter.tally().subscribe(),
            started: SystemTime::now() - started.elapsed(),
        };
        metrics::serve(run_dir, &config, sources)
            .inspect(|m| {
                if !m.serving.is_empty() {
                    info!("metrics: serving on {}", m.serving.join(" and "));
                }
            })
            .inspect_err(|e| error!("the metrics are off: {}", crate::error_chain(e)))
            .ok()
    }
}
