//! Everything that talks to the kernel's BPF side: the host checks
//! ([`compat`], and [`host_cgroup`] for a container given the host's
//! cgroups), structure offsets from BTF ([`btf`]), loading, attaching and
//! pinning the programs ([`loader`], [`pins`]), the LRU maps' sizes
//! ([`lru`]), the typed maps ([`maps`]), and read-only views of what is
//! pinned for `loopwarden status` ([`inspect`]); and the kernel's TCP
//! sockets as `NETLINK_SOCK_DIAG` shows them ([`sock_diag`]: listed,
//! found, destroyed), and the socket options nix does not name
//! ([`sockopt`]).

pub mod btf;
pub mod compat;
pub mod host_cgroup;
pub mod inspect;
#[cfg(not(fuzzing))]
pub mod loader;
pub mod lru;
pub mod maps;
pub mod mountinfo;
pub mod pins;
pub mod sock_diag;
pub mod sockopt;
pub mod sys;
