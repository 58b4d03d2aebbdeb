//! Why a policy file is rejected: [`ConfigError`] names the file and the
//! position, [`Problem`] what is wrong with a well-formed value.

use std::path::PathBuf;

use loopwarden_common::{COMM_LEN, EXE_NAME_LEN};

use super::{
    CONNECTIONS, IDENT_TIMEOUT_MS, Location, MAX_CONFIG_BYTES, MAX_NAME_BYTES, MAX_PATH_BYTES,
    RELAY_WINDOW_MS, lines::Position,
};
use crate::{catalog::CATALOG_PREFIX, events::EGRESS_PREFIX};

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {} does not exist: create it, or name the file to use (`run --config \
         FILE`, `check-config FILE`; `check-config --default` checks the embedded default)",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error(
        "config file {} is a directory: name the policy file itself (e.g. {})",
        path.display(),
        path.join("loopwarden.toml").display()
    )]
    IsDirectory { path: PathBuf },
    #[error(
        "config file {} is a FIFO that nothing wrote to within 10 s: give the policy file \
         itself, or start its writer",
        path.display()
    )]
    UnwrittenFifo { path: PathBuf },
    #[error(
        "config file {file} is {}the {MAX_CONFIG_BYTES}-byte (4 MiB) limit for policy files: is \
         this the right file?",
        size.map_or_else(|| "longer than ".to_owned(), |size| format!("{size} bytes, over "))
    )]
    TooLarge {
        file: String,
        /// `None` when the file does not say (a pipe or a device).
        size: Option<u64>,
    },
    #[error(
        "{}: not UTF-8 text (byte {byte:#04x}): policy files must be UTF-8",
        Position(file, Some(at))
    )]
    NotUtf8 {
        file: String,
        /// Where the first byte that is not UTF-8 is.
        at: Location,
        byte: u8,
    },
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type, an unknown key, a missing key.
    #[error("{}: {message}", Position(file, at.as_ref()))]
    Syntax {
        file: String,
        /// Absent only when the parser could not say.
        at: Option<Location>,
        message: String,
    },
    /// Well-formed TOML with a value the policy cannot use.
    #[error("{}: {problem}", Position(file, Some(at)))]
    Invalid {
        file: String,
        at: Location,
        problem: Problem,
    },
    /// Several such values (each table's first, each rule's), in the
    /// file's order: said on one line, for the journal.
    #[error("{} problems: {}", problems.len(), crate::Several(problems, crate::SHOWN_PROBLEMS))]
    Several { problems: Vec<ConfigError> },
}

impl ConfigError {
    /// Each problem this error stands for: its own, or [`ConfigError::Several`]'s.
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several { problems } => problems.iter().collect(),
            one => vec![one],
        }
    }

    /// Where in the file the problem is, if it says.
    fn at(&self) -> Option<Location> {
        match self {
            ConfigError::Invalid { at, .. } | ConfigError::NotUtf8 { at, .. } => Some(*at),
            ConfigError::Syntax { at, .. } => *at,
            _ => None,
        }
    }

    /// `problems` as one error: none is `Ok`, one is itself, more are
    /// [`ConfigError::Several`] in the file's order.
    pub(super) fn all(mut problems: Vec<ConfigError>) -> Result<(), ConfigError> {
        // Stable: problems at one place keep the order they were found in.
        problems.sort_by_key(|p| {
            p.at()
                .map_or((usize::MAX, usize::MAX), |at| (at.line, at.column))
        });
        match problems.len() {
            0 => Ok(()),
            1 => Err(problems.remove(0)),
            _ => Err(ConfigError::Several { problems }),
        }
    }
}

/// What is wrong with a well-formed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(
        "rule name `{name}` may only contain ASCII letters and digits and `_ . : -`, and not be empty"
    )]
    BadRuleName { name: String },
    #[error(
        "rule name `{name}` starts with `{prefix}`, which is reserved for built-in rules (`{}`) \
         and `[[egress]]` rules (`{}`)",
        CATALOG_PREFIX,
        EGRESS_PREFIX
    )]
    ReservedRuleName { name: String, prefix: &'static str },
    #[error(
        "egress rule name `egress:{bare}` carries the prefix lines give it: name it `{bare}` \
         (lines and metrics then say `egress:{bare}`)"
    )]
    EgressPrefixed { bare: String },
    #[error("rule name `-` is reserved: lines name no rule so")]
    DashRuleName,
    #[error("rule name `relay` is reserved: lines name the relay verdict so")]
    RelayRuleName,
    #[error("rule name `bind-guard` is reserved: lines name the bind guard so")]
    BindRuleName,
    #[error("rule name `{name}` is already used by the rule at line {first_line}")]
    DuplicateRuleName { name: String, first_line: usize },
    #[error(
        "rule `{rule}` has no criteria: give at least one of exe, exe_name, comm, uid, user, \
         cgroup, parent_exe, ancestor_exe, script"
    )]
    NoCriteria { rule: String },
    #[error(
        "window_ms is {value}: give milliseconds from {} to {}",
        RELAY_WINDOW_MS.start(),
        RELAY_WINDOW_MS.end()
    )]
    RelayWindow { value: i64 },
    #[error(
        "timeout_ms is {value}: give milliseconds from {} to {}",
        IDENT_TIMEOUT_MS.start(),
        IDENT_TIMEOUT_MS.end()
    )]
    IdentTimeout { value: i64 },
    #[error(
        "connections is {value}: give how many live tagged connections to hold, from {} to {}",
        CONNECTIONS.start(),
        CONNECTIONS.end()
    )]
    Connections { value: i64 },
    #[error("`{text}` is not a socket address: write \"127.0.0.1:113\" or \"[::1]:113\"")]
    BadSocketAddr { text: String },
    #[error(
        "`{text}` has port 0, which would listen on a port chosen at random (and unprotected): \
         name the port"
    )]
    ListenPortZero { text: String },
    #[error(
        "metrics listen address `{addr}` is not a loopback address: write e.g. \"127.0.0.1:9477\" \
         (to scrape from elsewhere, put a proxy in front)"
    )]
    MetricsNotLoopback { addr: std::net::SocketAddr },
    #[error(
        "`{addr}` takes the port the listen address at line {first_line} takes (the same \
         address, or a wildcard that holds it): the daemon could not bind both; give each \
         listener an address and port of its own"
    )]
    ListenTwice {
        addr: std::net::SocketAddr,
        first_line: usize,
    },
    #[error(
        "script `{script}` is {len} bytes: the kernel keeps the first {kept} bytes of a \
         script's name, so it could not tell one of {kept} or more from longer ones that start \
         alike; give a path of at most {max} bytes",
        kept = loopwarden_common::SCRIPT_LEN - 1,
        max = loopwarden_common::SCRIPT_LEN - 2
    )]
    ScriptTooLong { script: String, len: usize },
    #[error("`{field}` is an empty list: remove the key or list at least one value")]
    EmptyList { field: &'static str },
    #[error(
        "`deny` is an empty list: an egress rule refuses what it lists, so list at least one \
         CIDR (\"10.0.0.0/8\") or set ({sets})",
        sets = crate::policy::egress::Builtin::ALL.map(|b| format!("\"{}\"", b.name())).join(", ")
    )]
    EgressDenyEmpty,
    #[error("`{field}` is an empty string")]
    EmptyValue { field: &'static str },
    #[error(
        "{field} {value:?} has whitespace at an end or a control character (a line break, a \
         tab): it is matched exactly, and would never match; write it without them"
    )]
    StrayCharacters { field: &'static str, value: String },
    #[error(
        "{field} `{cgroup}` has a `..` component: name a cgroup by its path below the cgroup v2 \
         root (such as `system.slice/app.service`) or by its unit name"
    )]
    CgroupParentDir { field: &'static str, cgroup: String },
    #[error(
        "{field} `{cgroup}` is a path on the cgroup filesystem: a cgroup is named by its path \
         below the cgroup v2 root, so write `{below}`"
    )]
    CgroupMountPath {
        field: &'static str,
        cgroup: String,
        below: String,
    },
    #[error(
        "{field} `{cgroup}` is the root cgroup, which holds every process: it narrows nothing \
         (name the unit or the slice whose processes are meant)"
    )]
    RootCgroup { field: &'static str, cgroup: String },
    #[error(
        "comm `{comm}` is {len} bytes but the kernel keeps at most {max}, so it could never match \
         (match the executable with exe or exe_name instead)",
        max = COMM_LEN - 1
    )]
    CommTooLong { comm: String, len: usize },
    #[error("`{field}` must be an absolute path, not `{path}`")]
    RelativePath { field: &'static str, path: String },
    #[error(
        "`{field}` path is {len} bytes, longer than Linux allows ({MAX_PATH_BYTES}, PATH_MAX \
         without its NUL)"
    )]
    PathTooLong { field: &'static str, len: usize },
    #[error(
        "`{field}` path has a {len}-byte component, longer than Linux allows ({MAX_NAME_BYTES}, \
         NAME_MAX)"
    )]
    PathComponentTooLong { field: &'static str, len: usize },

    #[error("exe_name `{name}` contains `/`: it is the executable's file name; put paths in exe")]
    NotAFileName { name: String },
    #[error(
        "exe_name `{name}` contains `{glob}`: a rule's exe_name is matched as the file's exact \
         name, with no wildcards (only the catalog's names match as prefixes, shown as \
         `name*`); list each name (`python3` runs `python3.11` on Debian), or match the file \
         with exe"
    )]
    ExeNameGlob { name: String, glob: char },
    #[error(
        "exe_name `{name}` is {len} bytes: the kernel reads the first {kept} bytes of a file's \
         name, so it could not tell one of {kept} or more from longer ones that start alike; \
         give at most {max} bytes, or match the file with exe instead",
        kept = EXE_NAME_LEN - 1,
        max = EXE_NAME_LEN - 2
    )]
    ExeNameTooLong { name: String, len: usize },
    #[error("port {port} is out of range: ports are 1-65535")]
    PortOutOfRange { port: i64 },
    #[error("`{text}` is not a port range: write \"FIRST-LAST\", e.g. \"9000-9100\"")]
    BadPortRange { text: String },
    #[error("port range {first}-{last} is reversed: the first port must not exceed the last")]
    ReversedPortRange { first: u16, last: u16 },
    #[error("\"all\" cannot be combined with other ports")]
    AllInList,
    #[error(
        "loopback_only takes ports and ranges, not \"all\": list the ports services must keep \
         on loopback, e.g. [11434, \"9000-9100\"]"
    )]
    BindAllPorts,
    #[error("egress rule name `{name}` is already used by the egress rule at line {first_line}")]
    DuplicateEgressName { name: String, first_line: usize },
    #[error("egress rule `{rule}`: action must be \"deny\" or \"audit\"")]
    EgressAction { rule: String },
    #[error(
        "egress rule `{rule}` names no service: give at least one of exe, user, uid, cgroup \
         (to keep every process from a destination, use a firewall)"
    )]
    EgressNoSubject { rule: String },
    #[error(
        "`{text}` is neither a CIDR nor a built-in set: write a CIDR like \"203.0.113.0/24\" or \
         one of metadata, loopback, link-local, private"
    )]
    EgressUnknown { text: String },
    #[error(
        "`{text}` holds the unspecified address {unspecified}, which no connect reaches: one to \
         {unspecified} goes to {loopback} on this host, and is judged as that; deny `loopback` \
         (or {loopback}) to refuse it"
    )]
    EgressUnspecified {
        text: String,
        unspecified: &'static str,
        loopback: &'static str,
    },
    #[error("`{text}` is not a CIDR: write e.g. \"10.20.0.0/16\" or \"2001:db8::/32\"")]
    BadCidr { text: String },
    #[error("`{text}` has host bits set: write its network, {network}")]
    CidrHostBits { text: String, network: ipnet::IpNet },
    #[error(
        "allow `{allow}` lies inside the cloud metadata address {metadata}, which every egress rule \
         refuses: an allow can never re-open it"
    )]
    AllowInMetadata { allow: String, metadata: String },
    #[error("too many egress rules: {count}, at most {max} fit (this is the first that does not)")]
    TooManyEgressRules { count: usize, max: usize },
    #[error(
        "the egress rules list {count} distinct prefixes (with the built-in metadata addresses), \
         at most {max} fit (this rule's are the first that do not): use wider ranges"
    )]
    TooManyEgressPrefixes { count: usize, max: u32 },
    #[error(
        "[browsers] {list} takes ports and ranges, not \"all\": the table's `action` says what \
         ports no list names get"
    )]
    BrowsersAllPorts { list: &'static str },
    #[error(
        "port {port} is already listed in [browsers] {first_list} at line {first_line}: a port \
         gets one treatment"
    )]
    BrowsersPortTwice {
        port: u16,
        first_list: &'static str,
        first_line: usize,
    },
    #[error("rule name `browsers` is reserved: lines name the rule of [browsers] exe/exe_name so")]
    BrowsersRuleName,
    #[error(
        "too many rules: {user} in the file plus {catalog} from the catalog make {total}, at most \
         {max} fit (this is the first that does not); merge rules or set `catalog = false`",
        total = user + catalog
    )]
    TooManyRules {
        user: usize,
        catalog: usize,
        max: usize,
    },
}
