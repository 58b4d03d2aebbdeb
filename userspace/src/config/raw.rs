//! The file as serde sees it. Keys left out are `None`; the defaults come
//! from `Config::embedded_default` during validation.

use std::{fmt, ops::Range};

use serde::{
    Deserialize, Deserializer,
    de::{self, IntoDeserializer, SeqAccess, Visitor},
};
use toml::Spanned;

use super::{DenyErrno, IdentError};
use crate::policy::{Action, Mode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) mode: Option<Mode>,
    pub(super) deny_errno: Option<DenyErrno>,
    pub(super) catalog: Option<bool>,
    pub(super) log_allowed: Option<bool>,
    pub(super) protect: Option<RawProtect>,
    pub(super) relay: Option<RawRelay>,
    pub(super) provenance: Option<RawProvenance>,
    pub(super) ident: Option<RawIdent>,
    pub(super) bind: Option<RawBind>,
    pub(super) browsers: Option<RawBrowsers>,
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) rule: Vec<RawRule>,
    #[serde(default)]
    pub(super) egress: Vec<RawEgress>,
}

impl RawConfig {
    /// Whether the file sets nothing at all.
    pub(super) fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.deny_errno.is_none()
            && self.catalog.is_none()
            && self.log_allowed.is_none()
            && self.protect.is_none()
            && self.relay.is_none()
            && self.provenance.is_none()
            && self.ident.is_none()
            && self.bind.is_none()
            && self.browsers.is_none()
            && self.metrics.is_none()
            && self.rule.is_empty()
            && self.egress.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProtect {
    pub(super) ports: Option<Spanned<OneOrMany<PortItem>>>,
    pub(super) netns: Option<Spanned<OneOrMany<String>>>,
    pub(super) host_addresses: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    pub(super) action: Option<Action>,
    pub(super) window_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvenance {
    pub(super) tag: Option<bool>,
    pub(super) getsockopt: Option<bool>,
    pub(super) getsockopt_cgroups: Option<Spanned<OneOrMany<String>>>,
    pub(super) query: Option<bool>,
    pub(super) connections: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdent {
    pub(super) listen: Option<Spanned<OneOrMany<String>>>,
    pub(super) netns: Option<Spanned<String>>,
    pub(super) relayed: Option<IdentError>,
    pub(super) timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBind {
    pub(super) loopback_only: Option<Spanned<OneOrMany<PortItem>>>,
    pub(super) allow_exe: Option<Spanned<OneOrMany<String>>>,
    pub(super) allow_user: Option<Spanned<OneOrMany<String>>>,
    pub(super) allow_uid: Option<Spanned<OneOrMany<u32>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) socket: Option<bool>,
    pub(super) listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBrowsers {
    pub(super) action: Option<Action>,
    pub(super) deny: Option<Spanned<OneOrMany<PortItem>>>,
    pub(super) audit: Option<Spanned<OneOrMany<PortItem>>>,
    pub(super) allow: Option<Spanned<OneOrMany<PortItem>>>,
    pub(super) exe_name: Option<Spanned<OneOrMany<String>>>,
    pub(super) exe: Option<Spanned<OneOrMany<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Spanned<String>,
    pub(super) action: Action,
    pub(super) exe: Option<Spanned<OneOrMany<String>>>,
    pub(super) exe_name: Option<Spanned<OneOrMany<String>>>,
    pub(super) comm: Option<Spanned<OneOrMany<String>>>,
    pub(super) uid: Option<Spanned<OneOrMany<u32>>>,
    pub(super) user: Option<Spanned<OneOrMany<String>>>,
    pub(super) cgroup: Option<Spanned<OneOrMany<String>>>,
    pub(super) parent_exe: Option<Spanned<OneOrMany<String>>>,
    pub(super) ancestor_exe: Option<Spanned<OneOrMany<String>>>,
    pub(super) script: Option<Spanned<OneOrMany<String>>>,
}

/// One `[[egress]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    pub(super) name: Spanned<String>,
    pub(super) action: Spanned<Action>,
    pub(super) exe: Option<Spanned<OneOrMany<String>>>,
    pub(super) uid: Option<Spanned<OneOrMany<u32>>>,
    pub(super) user: Option<Spanned<OneOrMany<String>>>,
    pub(super) cgroup: Option<Spanned<OneOrMany<String>>>,
    pub(super) deny: Spanned<OneOrMany<String>>,
    pub(super) allow: Option<Spanned<OneOrMany<String>>>,
}

/// A value or a list of values. List elements keep their own spans; a single
/// value takes the span of the key's value.
pub(super) struct OneOrMany<T>(pub(super) Vec<(Option<Range<usize>>, T)>);

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
pub(super) enum PortItem {
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
