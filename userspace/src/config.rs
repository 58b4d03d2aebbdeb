//! The TOML policy file: parsing, defaults and validation.
//!
//! This module owns the file format. It turns text into a validated
//! [`Config`] in which every value remembers where it was written
//! ([`Location`]), so later stages (name resolution in
//! [`crate::policy::compile`]) can point at the offending line too. Nothing
//! here touches the host beyond reading the file.
//!
//! # Format
//!
//! ```toml
//! mode = "audit"                 # "audit" (default) | "enforce"
//! deny_errno = "ECONNREFUSED"    # default; or "EPERM"
//! catalog = true                 # default: append the built-in tunnel catalog after the rules below
//! log_allowed = false            # default: report allowed connects to protected destinations too
//!
//! [protect]
//! ports = "all"                  # default; or ports and ranges: [8080, "9000-9100"]
//! netns = ["/run/netns/blue"]    # only check connects made in these network namespaces (absent = all)
//! host_addresses = false         # default: also protect the host's own non-loopback addresses
//!
//! [[rule]]
//! name = "relay-socat"           # required, unique, [A-Za-z0-9_.:-]+; "catalog:" is reserved
//! action = "deny"                # required: "deny" | "audit" | "allow"
//! exe = "/usr/bin/socat"         # executable path(s), resolved to device+inode at load
//! exe_name = "socat"             # the executable file's name as the kernel sees it
//! comm = "socat"                 # task comm (at most 15 bytes)
//! uid = 0                        # uid(s)
//! user = "nobody"                # user name(s), resolved to uids
//! cgroup = "cloudflared.service" # cgroup v2 path below the root, or a bare unit name
//! parent_exe = "/usr/sbin/sshd"  # the direct parent's executable path(s)
//! ancestor_exe = "/usr/sbin/sshd" # any ancestor's executable path(s)
//! ```
//!
//! Rules are tried in file order, then the catalog's; the first rule that
//! matches decides. Every criterion takes one value or a list; a list matches
//! when any of its values does, and a rule matches when all of its criteria
//! do. Two pairs name the same attribute and therefore combine as one
//! criterion (any value of either matches): `uid` with `user`, and
//! `parent_exe` with `ancestor_exe`. A rule needs at least one criterion.
//!
//! Every key of every table is checked: a misspelt key is an error, not a
//! silently ignored setting.
//!
//! A file is read only if it is UTF-8 and at most [`MAX_CONFIG_BYTES`] long;
//! a file with no settings at all (empty, or only comments) is the
//! [`Config::embedded_default`], with a warning that says so.

use std::{
    collections::HashMap,
    fmt,
    fs::File,
    io::{self, Read as _},
    ops::Range,
    path::Path,
    path::PathBuf,
};

use loopwarden_common::{COMM_LEN, EXE_NAME_LEN, MAX_RULES};
use serde::{
    Deserialize, Deserializer,
    de::{self, IntoDeserializer, SeqAccess, Visitor},
};
use toml::Spanned;

use crate::{
    catalog::{CATALOG, CATALOG_PREFIX},
    policy::{Action, Mode},
};

/// Where the daemon looks for its policy when not given `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/loopwarden/loopwarden.toml";

/// Name [`Config::embedded_default`] reports as its source.
pub const EMBEDDED_SOURCE: &str = "<built-in default>";

/// The largest policy file loopwarden reads. A real policy is a few
/// kilobytes (at most 64 rules of at most 1024 values per criterion); a
/// bigger file is refused before it is read, so a wrong path (a log, an
/// image, `/dev/zero`) fails at once instead of filling memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Longest path Linux accepts, in bytes, without the terminating NUL
/// (`PATH_MAX` is 4096 with it).
const MAX_PATH_BYTES: usize = libc::PATH_MAX as usize - 1;

/// Longest file name Linux accepts (`NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;

/// A position in the config file, both 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub at: Location,
}

/// The errno a denied connect() fails with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum DenyErrno {
    /// "Connection refused": what a closed port looks like; tools give up
    /// quietly.
    #[default]
    #[serde(rename = "ECONNREFUSED")]
    Econnrefused,
    /// "Operation not permitted": says a policy intervened.
    #[serde(rename = "EPERM")]
    Eperm,
}

impl DenyErrno {
    /// The positive errno value.
    pub const fn errno(self) -> u32 {
        match self {
            DenyErrno::Econnrefused => libc::ECONNREFUSED as u32,
            DenyErrno::Eperm => libc::EPERM as u32,
        }
    }

    /// The symbolic name, as written in the config.
    pub const fn name(self) -> &'static str {
        match self {
            DenyErrno::Econnrefused => "ECONNREFUSED",
            DenyErrno::Eperm => "EPERM",
        }
    }
}

/// An inclusive range of destination ports; a single port is `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// Which destination ports are protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSet {
    All,
    /// Never empty.
    Ranges(Vec<PortRange>),
}

/// The `[protect]` table: which connects are checked at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protect {
    pub ports: PortSet,
    /// Network namespace files; empty means every namespace.
    pub netns: Vec<Located<PathBuf>>,
    /// Also protect the host's own non-loopback addresses.
    pub host_addresses: bool,
}

/// What a rule matches on. An empty list means the rule does not constrain
/// that attribute (the file cannot give an empty list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Criteria {
    /// Absolute executable paths.
    pub exe: Vec<Located<PathBuf>>,
    /// Executable file names (no `/`).
    pub exe_name: Vec<Located<String>>,
    /// Task comms, at most `COMM_LEN - 1` bytes.
    pub comm: Vec<Located<String>>,
    pub uid: Vec<Located<u32>>,
    /// User names, resolved to uids at compile time.
    pub user: Vec<Located<String>>,
    /// cgroup v2 paths below the root or bare unit names.
    pub cgroup: Vec<Located<String>>,
    /// Absolute executable paths of the direct parent.
    pub parent_exe: Vec<Located<PathBuf>>,
    /// Absolute executable paths of any ancestor.
    pub ancestor_exe: Vec<Located<PathBuf>>,
}

impl Criteria {
    /// Whether no criterion is given (such a rule would match everything).
    pub fn is_empty(&self) -> bool {
        self.exe.is_empty()
            && self.exe_name.is_empty()
            && self.comm.is_empty()
            && self.uid.is_empty()
            && self.user.is_empty()
            && self.cgroup.is_empty()
            && self.parent_exe.is_empty()
            && self.ancestor_exe.is_empty()
    }
}

/// One `[[rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// Where its name is written.
    pub at: Location,
    pub action: Action,
    pub criteria: Criteria,
}

/// A validated policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where it was read from, for messages: a path or [`EMBEDDED_SOURCE`].
    pub source: String,
    pub mode: Mode,
    pub deny_errno: DenyErrno,
    /// Append the built-in catalog after the user's rules.
    pub catalog: bool,
    /// Report allowed connects to protected destinations too.
    pub log_allowed: bool,
    pub protect: Protect,
    /// User rules in file order.
    pub rules: Vec<Rule>,
    /// Things an operator should know about the file that do not stop it
    /// from loading; compiling copies them into the policy's warnings.
    pub warnings: Vec<String>,
}

impl Config {
    /// The policy the daemon runs when no file exists at
    /// [`DEFAULT_CONFIG_PATH`] and none was named: audit mode, every port,
    /// the catalog, no user rules, every network namespace. It is also the
    /// single source of the defaults for keys a file leaves out.
    pub fn embedded_default() -> Self {
        Config {
            source: EMBEDDED_SOURCE.to_owned(),
            mode: Mode::Audit,
            deny_errno: DenyErrno::Econnrefused,
            catalog: true,
            log_allowed: false,
            protect: Protect {
                ports: PortSet::All,
                netns: Vec::new(),
                host_addresses: false,
            },
            rules: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Reads and validates the file at `path`: a directory, a file over
    /// [`MAX_CONFIG_BYTES`] or one that is not UTF-8 is refused with an
    /// error saying so.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let read_error = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                ConfigError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        };
        let name = path.display().to_string();
        let file = File::open(path).map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        if meta.is_dir() {
            return Err(ConfigError::IsDirectory {
                path: path.to_owned(),
            });
        }
        let too_large = |size| ConfigError::TooLarge {
            file: name.clone(),
            size,
        };
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(too_large(Some(meta.len())));
        }
        // Pipes and devices report no size: read one byte past the limit.
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(too_large(None));
        }
        Self::from_bytes_named(&bytes, &name)
    }

    /// Like [`Config::from_str_named`], for the raw bytes of a file: they
    /// must be UTF-8 and at most [`MAX_CONFIG_BYTES`] long.
    pub fn from_bytes_named(bytes: &[u8], name: &str) -> Result<Self, ConfigError> {
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                file: name.to_owned(),
                size: Some(bytes.len() as u64),
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let valid = &bytes[..e.valid_up_to()];
            let at = std::str::from_utf8(valid).map_or_else(
                |_| Location::default(),
                |v| LineIndex::new(v).locate(v.len()),
            );
            ConfigError::NotUtf8 {
                file: name.to_owned(),
                at,
                byte: bytes.get(e.valid_up_to()).copied().unwrap_or_default(),
            }
        })?;
        Self::from_str_named(text, name)
    }

    /// Parses and validates `text`; `name` (usually the path) prefixes every
    /// error message.
    pub fn from_str_named(text: &str, name: &str) -> Result<Self, ConfigError> {
        let lines = LineIndex::new(text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| lines.locate(span.start));
            // One line, so it reads well in the journal.
            let mut message = e.message().trim().replace('\n', "; ");
            if let Some(context) = at.and_then(|at| lines.context(at)) {
                message = format!("{context}: {message}");
            }
            ConfigError::Syntax {
                file: name.to_owned(),
                at,
                message,
            }
        })?;
        Validator {
            file: name,
            lines: &lines,
        }
        .config(raw)
    }
}

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {} does not exist: create it, or pass --config with the file to use \
         (`loopwarden check-config FILE` validates one)",
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
}

/// What is wrong with a well-formed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("rule name `{name}` may only contain letters, digits and `_ . : -`")]
    BadRuleName { name: String },
    #[error(
        "rule name `{name}` starts with `{CATALOG_PREFIX}`, which is reserved for built-in rules"
    )]
    ReservedRuleName { name: String },
    #[error("rule name `{name}` is already used by the rule at line {first_line}")]
    DuplicateRuleName { name: String, first_line: usize },
    #[error(
        "rule `{rule}` has no criteria: give at least one of exe, exe_name, comm, uid, user, \
         cgroup, parent_exe, ancestor_exe"
    )]
    NoCriteria { rule: String },
    #[error("`{field}` is an empty list: remove the key or list at least one value")]
    EmptyList { field: &'static str },
    #[error("`{field}` is an empty string")]
    EmptyValue { field: &'static str },
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
        "exe_name `{name}` is {len} bytes but the kernel compares at most {max}, so it would also \
         match every name sharing those bytes (match the file with exe instead)",
        max = EXE_NAME_LEN - 1
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

/// `file:line:column` (or just `file`) in messages.
struct Position<'a>(&'a str, Option<&'a Location>);

impl fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(at) => write!(f, "{}:{at}", self.0),
            None => f.write_str(self.0),
        }
    }
}

/// Byte offsets to line and column.
struct LineIndex<'a> {
    text: &'a str,
    /// Offset of the first byte of each line.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// What the parser was looking at, for messages that do not say: the key
    /// of a `key = value` line when `at` is in the value, or the header of a
    /// table.
    fn context(&self, at: Location) -> Option<String> {
        let start = *self.starts.get(at.line.checked_sub(1)?)?;
        let line = self.text[start..].lines().next()?;
        let before: String = line.chars().take(at.column - 1).collect();
        if let Some((key, _)) = before.split_once('=') {
            let key = key.trim();
            return (!key.is_empty()).then(|| format!("`{key}`"));
        }
        let line = line.trim();
        line.starts_with('[').then(|| format!("in `{line}`"))
    }

    fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line.saturating_sub(1)];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Location { line, column }
    }
}

// ---------------------------------------------------------------------------
// The file as serde sees it. Keys left out are `None`; the defaults come from
// `Config::embedded_default` during validation.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mode: Option<Mode>,
    deny_errno: Option<DenyErrno>,
    catalog: Option<bool>,
    log_allowed: Option<bool>,
    protect: Option<RawProtect>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

impl RawConfig {
    /// Whether the file sets nothing at all.
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.deny_errno.is_none()
            && self.catalog.is_none()
            && self.log_allowed.is_none()
            && self.protect.is_none()
            && self.rule.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtect {
    ports: Option<Spanned<OneOrMany<PortItem>>>,
    netns: Option<Spanned<OneOrMany<String>>>,
    host_addresses: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    action: Action,
    exe: Option<Spanned<OneOrMany<String>>>,
    exe_name: Option<Spanned<OneOrMany<String>>>,
    comm: Option<Spanned<OneOrMany<String>>>,
    uid: Option<Spanned<OneOrMany<u32>>>,
    user: Option<Spanned<OneOrMany<String>>>,
    cgroup: Option<Spanned<OneOrMany<String>>>,
    parent_exe: Option<Spanned<OneOrMany<String>>>,
    ancestor_exe: Option<Spanned<OneOrMany<String>>>,
}

/// A value or a list of values. List elements keep their own spans; a single
/// value takes the span of the key's value.
struct OneOrMany<T>(Vec<(Option<Range<usize>>, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor<T>(std::marker::PhantomData<T>);

        impl<T> OneOrManyVisitor<T> {
            fn one(value: T) -> OneOrMany<T> {
                OneOrMany(vec![(None, value)])
            }
        }

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(Self::one)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(Self::one)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(Self::one)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(Self::one)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<T>>()? {
                    let span = item.span();
                    items.push((Some(span), item.into_inner()));
                }
                Ok(OneOrMany(items))
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor(std::marker::PhantomData))
    }
}

/// One entry of `ports`: a number, `"all"` or a `"FIRST-LAST"` range.
enum PortItem {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortItemVisitor;

        impl Visitor<'_> for PortItemVisitor {
            type Value = PortItem;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"all\", a port number or a range like \"9000-9100\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortItem, E> {
                Ok(PortItem::Number(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortItem, E> {
                Ok(PortItem::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortItem, E> {
                Ok(PortItem::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(PortItemVisitor)
    }
}

// ---------------------------------------------------------------------------
// Validation: raw values to `Config`, with positions.

struct Validator<'a> {
    file: &'a str,
    lines: &'a LineIndex<'a>,
}

impl Validator<'_> {
    fn invalid(&self, span: &Range<usize>, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            at: self.lines.locate(span.start),
            problem,
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let defaults = Config::embedded_default();
        let mut warnings = Vec::new();
        if raw.is_empty() {
            // Most likely a file truncated by accident, and the defaults
            // only report: say so wherever warnings are shown.
            warnings.push(format!(
                "{}: the file has no settings (it is empty or only comments), so the built-in \
                 defaults apply: audit mode, every port, the tunnel catalog",
                self.file
            ));
        }
        let catalog = raw.catalog.unwrap_or(defaults.catalog);
        let catalog_rules = if catalog { CATALOG.len() } else { 0 };
        if raw.rule.len() + catalog_rules > MAX_RULES {
            // Point at the first rule that does not fit.
            let first_over = MAX_RULES.saturating_sub(catalog_rules);
            let span = raw.rule.get(first_over).map_or(0..0, |r| r.name.span());
            return Err(self.invalid(
                &span,
                Problem::TooManyRules {
                    user: raw.rule.len(),
                    catalog: catalog_rules,
                    max: MAX_RULES,
                },
            ));
        }

        let protect = match raw.protect {
            None => defaults.protect,
            Some(p) => Protect {
                ports: match p.ports {
                    None => defaults.protect.ports,
                    Some(ports) => self.ports(ports)?,
                },
                netns: match p.netns {
                    None => defaults.protect.netns,
                    Some(netns) => self.paths("netns", netns)?,
                },
                host_addresses: p.host_addresses.unwrap_or(defaults.protect.host_addresses),
            },
        };

        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(raw.rule.len());
        for raw_rule in raw.rule {
            let rule = self.rule(raw_rule)?;
            if let Some(&first_line) = seen.get(&rule.name) {
                return Err(ConfigError::Invalid {
                    file: self.file.to_owned(),
                    at: rule.at,
                    problem: Problem::DuplicateRuleName {
                        name: rule.name,
                        first_line,
                    },
                });
            }
            seen.insert(rule.name.clone(), rule.at.line);
            rules.push(rule);
        }

        Ok(Config {
            source: self.file.to_owned(),
            mode: raw.mode.unwrap_or(defaults.mode),
            deny_errno: raw.deny_errno.unwrap_or(defaults.deny_errno),
            catalog,
            log_allowed: raw.log_allowed.unwrap_or(defaults.log_allowed),
            protect,
            rules,
            warnings,
        })
    }

    fn rule(&self, raw: RawRule) -> Result<Rule, ConfigError> {
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
        if name.is_empty() || !name.chars().all(valid_char) {
            return Err(self.invalid(&name_span, Problem::BadRuleName { name }));
        }
        if name.starts_with(CATALOG_PREFIX) {
            return Err(self.invalid(&name_span, Problem::ReservedRuleName { name }));
        }

        let criteria = Criteria {
            exe: self.opt_paths("exe", raw.exe)?,
            exe_name: self.opt_values("exe_name", raw.exe_name, |name| {
                if name.contains('/') {
                    return Err(Problem::NotAFileName { name });
                }
                if name.len() >= EXE_NAME_LEN {
                    let len = name.len();
                    return Err(Problem::ExeNameTooLong { name, len });
                }
                non_empty("exe_name", name)
            })?,
            comm: self.opt_values("comm", raw.comm, |comm| {
                if comm.len() >= COMM_LEN {
                    let len = comm.len();
                    return Err(Problem::CommTooLong { comm, len });
                }
                non_empty("comm", comm)
            })?,
            uid: self.opt_values("uid", raw.uid, Ok)?,
            user: self.opt_values("user", raw.user, |user| non_empty("user", user))?,
            cgroup: self.opt_values("cgroup", raw.cgroup, |cg| non_empty("cgroup", cg))?,
            parent_exe: self.opt_paths("parent_exe", raw.parent_exe)?,
            ancestor_exe: self.opt_paths("ancestor_exe", raw.ancestor_exe)?,
        };
        if criteria.is_empty() {
            return Err(self.invalid(&name_span, Problem::NoCriteria { rule: name }));
        }
        Ok(Rule {
            name,
            at: self.lines.locate(name_span.start),
            action: raw.action,
            criteria,
        })
    }

    /// Checks each value of a one-or-many key with `check`, keeping positions.
    fn values<T, U>(
        &self,
        field: &'static str,
        raw: Spanned<OneOrMany<T>>,
        check: impl Fn(T) -> Result<U, Problem>,
    ) -> Result<Vec<Located<U>>, ConfigError> {
        let outer = raw.span();
        let items = raw.into_inner().0;
        if items.is_empty() {
            return Err(self.invalid(&outer, Problem::EmptyList { field }));
        }
        items
            .into_iter()
            .map(|(span, value)| {
                let span = span.unwrap_or_else(|| outer.clone());
                match check(value) {
                    Ok(value) => Ok(Located {
                        value,
                        at: self.lines.locate(span.start),
                    }),
                    Err(problem) => Err(self.invalid(&span, problem)),
                }
            })
            .collect()
    }

    fn opt_values<T, U>(
        &self,
        field: &'static str,
        raw: Option<Spanned<OneOrMany<T>>>,
        check: impl Fn(T) -> Result<U, Problem>,
    ) -> Result<Vec<Located<U>>, ConfigError> {
        raw.map_or_else(|| Ok(Vec::new()), |raw| self.values(field, raw, check))
    }

    fn paths(
        &self,
        field: &'static str,
        raw: Spanned<OneOrMany<String>>,
    ) -> Result<Vec<Located<PathBuf>>, ConfigError> {
        self.values(field, raw, |path| {
            if !Path::new(&path).is_absolute() {
                return Err(Problem::RelativePath { field, path });
            }
            // Such a path could never resolve; say why instead of echoing it.
            if path.len() > MAX_PATH_BYTES {
                let len = path.len();
                return Err(Problem::PathTooLong { field, len });
            }
            if let Some(len) = path
                .split('/')
                .map(str::len)
                .find(|&len| len > MAX_NAME_BYTES)
            {
                return Err(Problem::PathComponentTooLong { field, len });
            }
            Ok(PathBuf::from(path))
        })
    }

    fn opt_paths(
        &self,
        field: &'static str,
        raw: Option<Spanned<OneOrMany<String>>>,
    ) -> Result<Vec<Located<PathBuf>>, ConfigError> {
        raw.map_or_else(|| Ok(Vec::new()), |raw| self.paths(field, raw))
    }

    fn ports(&self, raw: Spanned<OneOrMany<PortItem>>) -> Result<PortSet, ConfigError> {
        let outer = raw.span();
        let items = raw.into_inner().0;
        if let [(_, PortItem::Text(text))] = items.as_slice()
            && text == "all"
        {
            return Ok(PortSet::All);
        }
        if items.is_empty() {
            return Err(self.invalid(&outer, Problem::EmptyList { field: "ports" }));
        }
        items
            .into_iter()
            .map(|(span, item)| {
                let span = span.unwrap_or_else(|| outer.clone());
                port_range(item).map_err(|problem| self.invalid(&span, problem))
            })
            .collect::<Result<_, _>>()
            .map(PortSet::Ranges)
    }
}

fn non_empty(field: &'static str, value: String) -> Result<String, Problem> {
    if value.is_empty() {
        Err(Problem::EmptyValue { field })
    } else {
        Ok(value)
    }
}

fn port(port: i64) -> Result<u16, Problem> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Problem::PortOutOfRange { port }),
    }
}

fn port_range(item: PortItem) -> Result<PortRange, Problem> {
    let text = match item {
        PortItem::Number(n) => {
            let p = port(n)?;
            return Ok(PortRange { first: p, last: p });
        }
        PortItem::Text(text) => text,
    };
    if text == "all" {
        return Err(Problem::AllInList);
    }
    let bad = || Problem::BadPortRange { text: text.clone() };
    let number = |s: &str| -> Result<u16, Problem> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        port(s.parse::<i64>().unwrap_or(i64::MAX))
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let p = number(&text)?;
            (p, p)
        }
    };
    if first > last {
        return Err(Problem::ReversedPortRange { first, last });
    }
    Ok(PortRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_named(text, "test.toml")
    }

    /// Parses `text`, expecting an error whose message names `test.toml` at
    /// `line` and contains `phrase`.
    fn expect_error(text: &str, line: usize, phrase: &str) -> ConfigError {
        let err = match parse(text) {
            Ok(config) => panic!("expected an error containing {phrase:?}, parsed {config:?}"),
            Err(err) => err,
        };
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("test.toml:{line}:")),
            "expected line {line}: {message}"
        );
        assert!(
            message.contains(phrase),
            "expected {phrase:?} in: {message}"
        );
        err
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        for text in ["", "\n  \n", "# nothing yet\n\n# still nothing\n"] {
            let config = parse(text).unwrap();
            let [warning] = config.warnings.as_slice() else {
                panic!("expected one warning: {:?}", config.warnings);
            };
            assert!(warning.starts_with("test.toml: "), "{warning}");
            assert!(warning.contains("no settings"), "{warning}");
            assert!(warning.contains("audit mode"), "{warning}");
            assert_eq!(
                config,
                Config {
                    source: "test.toml".to_owned(),
                    warnings: config.warnings.clone(),
                    ..Config::embedded_default()
                }
            );
        }
        // Any setting, even one that repeats a default, is no accident.
        assert!(parse("mode = \"audit\"\n").unwrap().warnings.is_empty());
        assert!(parse("[protect]\n").unwrap().warnings.is_empty());
        let d = Config::embedded_default();
        assert_eq!(d.mode, Mode::Audit);
        assert_eq!(d.deny_errno.errno(), 111);
        assert!(d.catalog);
        assert!(!d.log_allowed);
        assert_eq!(d.protect.ports, PortSet::All);
        assert!(d.protect.netns.is_empty());
        assert!(!d.protect.host_addresses);
        assert!(d.rules.is_empty());
        assert_eq!(d.source, EMBEDDED_SOURCE);
    }

    const FULL: &str = r#"
mode = "enforce"
deny_errno = "EPERM"
catalog = false
log_allowed = true

[protect]
ports = [8080, "9000-9100", "22"]
netns = ["/run/netns/blue", "/proc/1/ns/net"]
host_addresses = true

[[rule]]
name = "relay-socat"
action = "deny"
exe = "/usr/bin/socat"
exe_name = ["socat", "socat1"]
comm = "socat"
uid = [0, 1000]
user = "nobody"
cgroup = "cloudflared.service"
parent_exe = "/usr/sbin/sshd"
ancestor_exe = ["/usr/sbin/sshd", "/usr/bin/tmux"]

[[rule]]
name = "allow.me:1"
action = "allow"
uid = 33
"#;

    #[test]
    fn full_example() {
        let config = parse(FULL).unwrap();
        assert_eq!(config.mode, Mode::Enforce);
        assert_eq!(config.deny_errno, DenyErrno::Eperm);
        assert_eq!(config.deny_errno.errno(), 1);
        assert!(!config.catalog);
        assert!(config.log_allowed);
        assert_eq!(
            config.protect.ports,
            PortSet::Ranges(vec![
                PortRange {
                    first: 8080,
                    last: 8080
                },
                PortRange {
                    first: 9000,
                    last: 9100
                },
                PortRange {
                    first: 22,
                    last: 22
                },
            ])
        );
        let netns: Vec<_> = config.protect.netns.iter().map(|n| &n.value).collect();
        assert_eq!(netns, ["/run/netns/blue", "/proc/1/ns/net"]);
        assert_eq!(
            config.protect.netns[1].at,
            Location {
                line: 9,
                column: 29
            }
        );
        assert!(config.protect.host_addresses);

        assert_eq!(config.rules.len(), 2);
        let r = &config.rules[0];
        assert_eq!(r.name, "relay-socat");
        assert_eq!(r.at.line, 13);
        assert_eq!(r.action, Action::Deny);
        let c = &r.criteria;
        assert_eq!(c.exe[0].value, Path::new("/usr/bin/socat"));
        assert_eq!(
            c.exe[0].at,
            Location {
                line: 15,
                column: 7
            }
        );
        assert_eq!(c.exe_name.len(), 2);
        assert_eq!(
            c.exe_name[1].at,
            Location {
                line: 16,
                column: 22
            }
        );
        assert_eq!(c.comm[0].value, "socat");
        let uids: Vec<u32> = c.uid.iter().map(|u| u.value).collect();
        assert_eq!(uids, [0, 1000]);
        assert_eq!(c.user[0].value, "nobody");
        assert_eq!(c.cgroup[0].value, "cloudflared.service");
        assert_eq!(c.parent_exe.len(), 1);
        assert_eq!(c.ancestor_exe.len(), 2);
        assert_eq!(c.ancestor_exe[1].at.line, 22);

        let r = &config.rules[1];
        assert_eq!(r.name, "allow.me:1");
        assert_eq!(r.action, Action::Allow);
        assert_eq!(r.criteria.uid[0].value, 33);
        assert!(r.criteria.exe.is_empty());
    }

    #[test]
    fn single_port_and_all() {
        let config = parse("[protect]\nports = 443\n").unwrap();
        assert_eq!(
            config.protect.ports,
            PortSet::Ranges(vec![PortRange {
                first: 443,
                last: 443
            }])
        );
        let config = parse("[protect]\nports = \"all\"\n").unwrap();
        assert_eq!(config.protect.ports, PortSet::All);
    }

    #[test]
    fn invalid_toml() {
        expect_error("mode = \"audit\"\n\nmode = = 3\n", 3, "");
        expect_error("[protect\nports = 1\n", 1, "");
    }

    #[test]
    fn unknown_fields() {
        expect_error(
            "mode = \"audit\"\nmood = \"enforce\"\n",
            2,
            "unknown field `mood`",
        );
        expect_error(
            "[protect]\nports = \"all\"\nport = 1\n",
            3,
            "unknown field `port`",
        );
        expect_error(
            "[[rule]]\nname = \"a\"\naction = \"deny\"\ncomm = \"x\"\nexe_path = \"/x\"\n",
            5,
            "unknown field `exe_path`",
        );
    }

    #[test]
    fn bad_mode_action_errno() {
        expect_error("\nmode = \"block\"\n", 2, "unknown variant `block`");
        expect_error(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\ncomm = \"x\"\n",
            3,
            "expected one of `deny`, `audit`, `allow`",
        );
        expect_error("deny_errno = \"EACCES\"\n", 1, "`ECONNREFUSED` or `EPERM`");
    }

    #[test]
    fn missing_rule_fields() {
        expect_error(
            "[[rule]]\nname = \"a\"\ncomm = \"x\"\n",
            1,
            "missing field `action`",
        );
        expect_error(
            "[[rule]]\naction = \"deny\"\ncomm = \"x\"\n",
            1,
            "missing field `name`",
        );
    }

    #[test]
    fn bad_ports() {
        let p = |ports: &str| format!("# protect\n[protect]\nports = {ports}\n");
        expect_error(&p("[80, \"9100-9000\"]"), 3, "9100-9000 is reversed");
        expect_error(&p("[0]"), 3, "port 0 is out of range");
        expect_error(&p("[\n  80,\n  70000,\n]"), 5, "port 70000 is out of range");
        expect_error(&p("\"9000-70000\""), 3, "port 70000 is out of range");
        expect_error(&p("\"9000..9100\""), 3, "not a port range");
        expect_error(&p("\"-5\""), 3, "not a port range");
        expect_error(&p("[]"), 3, "empty list");
        expect_error(&p("[\"all\", 80]"), 3, "\"all\" cannot be combined");
        expect_error(&p("-1"), 3, "port -1 is out of range");
        expect_error(&p("1.5"), 3, "invalid type");
    }

    fn rule(body: &str) -> String {
        format!("mode = \"audit\"\n\n[[rule]]\nname = \"r\"\naction = \"deny\"\n{body}\n")
    }

    #[test]
    fn bad_rules() {
        expect_error(&rule(""), 4, "rule `r` has no criteria");
        expect_error(
            &rule("comm = \"a-very-long-comm-name\""),
            6,
            "is 21 bytes but the kernel keeps at most 15",
        );
        // Exactly 15 bytes is fine.
        parse(&rule("comm = \"fifteen-bytes-x\"")).unwrap();
        expect_error(
            &rule(&format!("exe_name = \"{}\"", "x".repeat(32))),
            6,
            "is 32 bytes but the kernel compares at most 31",
        );
        parse(&rule(&format!("exe_name = \"{}\"", "x".repeat(31)))).unwrap();
        expect_error(
            &rule("exe = [\"/usr/bin/a\",\n  \"bin/socat\"]"),
            7,
            "`exe` must be an absolute path, not `bin/socat`",
        );
        expect_error(
            &rule("parent_exe = \"sshd\""),
            6,
            "`parent_exe` must be an absolute path",
        );
        expect_error(&rule("exe_name = \"/usr/bin/x\""), 6, "put paths in exe");
        expect_error(&rule("comm = []"), 6, "`comm` is an empty list");
        expect_error(&rule("user = \"\""), 6, "`user` is an empty string");
        expect_error(&rule("uid = -1"), 6, "invalid value");
        expect_error(&rule("uid = [\"root\"]"), 6, "invalid type");
        expect_error(
            "[protect]\nnetns = \"blue\"\n",
            2,
            "`netns` must be an absolute path",
        );
    }

    #[test]
    fn bad_rule_names() {
        let named =
            |name: &str| format!("[[rule]]\nname = \"{name}\"\naction = \"deny\"\ncomm = \"x\"\n");
        expect_error(&named("has space"), 2, "may only contain");
        expect_error(&named(""), 2, "may only contain");
        expect_error(&named("catalog:socat"), 2, "reserved for built-in rules");
        let twice = format!("{}\n{}", named("same"), named("same"));
        expect_error(&twice, 7, "already used by the rule at line 2");
    }

    #[test]
    fn too_many_rules() {
        let fit = MAX_RULES - CATALOG.len();
        parse(&rules(fit)).unwrap();
        // Rule number `fit` (0-based) starts at line 4 * fit + 1; its name is
        // on the next line.
        expect_error(&rules(fit + 1), 4 * fit + 2, "too many rules");
        let without_catalog = format!("catalog = false\n{}", rules(MAX_RULES));
        parse(&without_catalog).unwrap();
        let over = format!("catalog = false\n{}", rules(MAX_RULES + 1));
        expect_error(&over, 4 * MAX_RULES + 3, "set `catalog = false`");
    }

    #[test]
    fn missing_file_says_how_to_fix() {
        let err = Config::from_file("/nonexistent/loopwarden.toml").unwrap_err();
        assert!(matches!(err, ConfigError::NotFound { .. }));
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/loopwarden.toml"),
            "{message}"
        );
        assert!(message.contains("--config"), "{message}");
        assert!(message.contains("check-config"), "{message}");
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("loopwarden-config-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rules(n: usize) -> String {
        (0..n)
            .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\nuid = {i}\n"))
            .collect()
    }

    #[test]
    fn five_thousand_rules_are_refused_at_the_first_that_does_not_fit() {
        let text = rules(5000);
        let start = std::time::Instant::now();
        let fit = MAX_RULES - CATALOG.len();
        let err = expect_error(&text, 4 * fit + 2, "too many rules: 5000 in the file");
        println!("5000 rules: {err} ({:?})", start.elapsed());
        assert!(matches!(
            err,
            ConfigError::Invalid {
                problem: Problem::TooManyRules { user: 5000, .. },
                ..
            }
        ));
    }

    #[test]
    fn every_port() {
        let config = parse("[protect]\nports = \"1-65535\"\n").unwrap();
        assert_eq!(
            config.protect.ports,
            PortSet::Ranges(vec![PortRange {
                first: 1,
                last: 65535
            }])
        );
        // Each of the 65,535 listed on its own (about 400 KB of TOML).
        let list: Vec<String> = (1..=u16::MAX).map(|p| p.to_string()).collect();
        let text = format!("[protect]\nports = [{}]\n", list.join(", "));
        let start = std::time::Instant::now();
        let config = parse(&text).unwrap();
        let elapsed = start.elapsed();
        println!("65535 ports parsed in {elapsed:?}");
        let PortSet::Ranges(ranges) = &config.protect.ports else {
            panic!("expected ranges");
        };
        assert_eq!(ranges.len(), 65535);
        assert_eq!(
            ranges[65534],
            PortRange {
                first: 65535,
                last: 65535
            }
        );
        // Generous: a debug build on a busy machine takes well under a second.
        assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
    }

    #[test]
    fn paths_longer_than_linux_allows() {
        let long = |len: usize| {
            // Components of 200 bytes: only the total is over the limit.
            let mut path = format!("/{}", "a".repeat(199)).repeat(len / 200 + 1);
            path.truncate(len);
            path
        };
        for len in [10_000, libc::PATH_MAX as usize] {
            let path = long(len);
            assert_eq!(path.len(), len);
            let err = expect_error(
                &rule(&format!("exe = \"{path}\"")),
                6,
                &format!("`exe` path is {len} bytes, longer than Linux allows (4095"),
            );
            // The message says how long, without repeating the path.
            assert!(err.to_string().len() < 200, "{err}");
        }
        // The longest Linux takes is valid here (it may still not exist).
        let fits = long(libc::PATH_MAX as usize - 1);
        let config = parse(&rule(&format!("ancestor_exe = \"{fits}\""))).unwrap();
        assert_eq!(
            config.rules[0].criteria.ancestor_exe[0]
                .value
                .as_os_str()
                .len(),
            4095
        );
        let component = format!("/usr/bin/{}", "x".repeat(256));
        expect_error(
            &format!("[protect]\nnetns = \"{component}\"\n"),
            2,
            "`netns` path has a 256-byte component, longer than Linux allows (255",
        );
        parse(&rule(&format!("exe = \"/usr/bin/{}\"", "x".repeat(255)))).unwrap();
    }

    #[test]
    fn a_file_that_is_not_utf8_is_named_with_the_position() {
        let tmp = TempDir::new("utf8");
        let path = tmp.file("latin1.toml", b"mode = \"audit\"\n# caf\xe9\n");
        let err = Config::from_file(&path).unwrap_err();
        assert!(matches!(err, ConfigError::NotUtf8 { .. }), "{err:?}");
        let message = err.to_string();
        assert_eq!(
            message,
            format!(
                "{}:2:6: not UTF-8 text (byte 0xe9): policy files must be UTF-8",
                path.display()
            )
        );
        // A binary file fails at its first byte that is not UTF-8.
        let err = Config::from_bytes_named(b"\x7fELF\x02\x01\x01\xff", "x").unwrap_err();
        assert!(err.to_string().starts_with("x:1:8: not UTF-8"), "{err}");
    }

    #[test]
    fn a_directory_is_not_a_config_file() {
        let tmp = TempDir::new("dir");
        let err = Config::from_file(&tmp.0).unwrap_err();
        assert!(matches!(err, ConfigError::IsDirectory { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("config file {} is a directory", tmp.0.display())),
            "{message}"
        );
    }

    #[test]
    fn an_empty_file_is_the_default_policy_with_a_warning() {
        let tmp = TempDir::new("empty");
        let path = tmp.file("empty.toml", b"");
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.mode, Mode::Audit);
        assert_eq!(config.protect.ports, PortSet::All);
        assert_eq!(config.warnings.len(), 1);
        assert!(
            config.warnings[0].starts_with(&path.display().to_string()),
            "{:?}",
            config.warnings
        );
    }

    #[test]
    fn huge_files_are_refused_before_they_are_read() {
        let tmp = TempDir::new("huge");
        // 50 MiB, sparse: nothing is written, and nothing must be read.
        let path = tmp.0.join("huge.toml");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(50 << 20)
            .unwrap();
        let start = std::time::Instant::now();
        let err = Config::from_file(&path).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            err.to_string(),
            format!(
                "config file {} is 52428800 bytes, over the 4194304-byte (4 MiB) limit for policy \
                 files: is this the right file?",
                path.display()
            )
        );
        // Exactly at the limit is read (and then parsed: all spaces is empty).
        let path = tmp.file("limit.toml", &vec![b' '; MAX_CONFIG_BYTES as usize]);
        assert!(Config::from_file(&path).is_ok());
        // A device that never ends and says no size: read up to the limit only.
        let err = Config::from_file("/dev/zero").unwrap_err();
        assert!(
            matches!(err, ConfigError::TooLarge { size: None, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("is longer than the 4194304-byte"),
            "{err}"
        );
    }

    #[test]
    fn line_index() {
        let lines = LineIndex::new("ab\nc\u{e9}d\n\nx");
        assert_eq!(lines.locate(0), Location { line: 1, column: 1 });
        assert_eq!(lines.locate(2), Location { line: 1, column: 3 });
        assert_eq!(lines.locate(3), Location { line: 2, column: 1 });
        assert_eq!(lines.locate(6), Location { line: 2, column: 3 });
        assert_eq!(lines.locate(8), Location { line: 3, column: 1 });
        assert_eq!(lines.locate(9), Location { line: 4, column: 1 });
    }
}
