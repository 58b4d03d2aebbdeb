//! What `check-config` checks beyond the policy itself: the settings the
//! daemon resolves only when it starts (`[ident] netns`) or follows at
//! each refresh (`[provenance] getsockopt_cgroups`), which compiling the
//! policy does not read.

use crate::{config::Config, policy::Resolver as _, resolve::HostResolver};

/// What the daemon would meet in `config`'s start-only settings on this
/// host: errors (a start would fail) and warnings (a value matching
/// nothing yet), each `file:line:col: what`.
pub fn start_settings(config: &Config, resolver: &HostResolver) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let file = &config.source;
    if !config.ident.listen.is_empty()
        && let Some(netns) = &config.ident.netns
        && let Err(e) = resolver.netns(&netns.value)
    {
        errors.push(format!(
            "{file}:{}: [ident] netns {} cannot be resolved: {e} (the daemon binds the ident \
             responder there at start, and would not start)",
            netns.at,
            netns.value.display()
        ));
    }
    if config.provenance.getsockopt {
        for cgroup in &config.provenance.getsockopt_cgroups {
            if let Err(e) = resolver.cgroup(&cgroup.value) {
                warnings.push(format!(
                    "{file}:{}: getsockopt_cgroups `{}`: {e}; no getsockopt is answered there \
                     until the cgroup exists",
                    cgroup.at, cgroup.value
                ));
            }
        }
    }
    (errors, warnings)
}
