//! The raw BTF format's reader: the header, the string section, and just
//! enough of the type section to walk every record and look up struct
//! members, including members nested in anonymous structs and unions; for
//! a module's split BTF (`/sys/kernel/btf/<module>`) on top of the
//! kernel's.

use std::collections::HashSet;

use super::{FormatError, LookupError};

/// `BTF_MAGIC` as read in the file's own byte order.
pub(super) const MAGIC: u16 = 0xeb9f;
/// Fixed part of `struct btf_header`: magic, version, flags, hdr_len and the
/// four section offsets/lengths.
pub(super) const HEADER_LEN: usize = 24;
/// Size of `struct btf_type` (name_off, info, size/type).
const TYPE_LEN: usize = 12;
/// Deepest nesting of anonymous members or modifier chains we follow; real
/// kernels need a handful, this only stops a malformed blob from looping.
const MAX_DEPTH: usize = 32;

/// `BTF_KIND_*` values.
pub(super) mod kind {
    pub const INT: u8 = 1;
    pub const PTR: u8 = 2;
    pub const ARRAY: u8 = 3;
    pub const STRUCT: u8 = 4;
    pub const UNION: u8 = 5;
    pub const ENUM: u8 = 6;
    pub const FWD: u8 = 7;
    pub const TYPEDEF: u8 = 8;
    pub const VOLATILE: u8 = 9;
    pub const CONST: u8 = 10;
    pub const RESTRICT: u8 = 11;
    pub const FUNC: u8 = 12;
    pub const FUNC_PROTO: u8 = 13;
    pub const VAR: u8 = 14;
    pub const DATASEC: u8 = 15;
    pub const FLOAT: u8 = 16;
    pub const DECL_TAG: u8 = 17;
    pub const TYPE_TAG: u8 = 18;
    pub const ENUM64: u8 = 19;
}

/// One record of the type section, as located by [`Btf::parse`].
#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    /// Start of the `btf_type` within the type section.
    offset: usize,
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    vlen: u16,
    /// `size` for structs, unions, ints...; `type` for modifiers, typedefs.
    size_or_type: u32,
}

/// A struct member, as stored after its `btf_type`.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    /// Its width in bits when the struct's kind_flag marks it a bitfield;
    /// 0 otherwise.
    bitfield_size: u32,
}

/// A member as [`Btf::locate`] finds it: where, and of what type.
#[derive(Clone, Copy, Debug)]
struct Located {
    bits: u64,
    type_id: u32,
    bitfield_size: u32,
}

/// How wide a member must be for the kernel programs' reads of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// Exactly this many bytes: a scalar or a pointer, read whole.
    Bytes(u32),
    /// At least this many: an array or a struct, read in part.
    AtLeast(u32),
}

impl std::fmt::Display for Width {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Width::Bytes(n) => write!(f, "{n} bytes"),
            Width::AtLeast(n) => write!(f, "at least {n} bytes"),
        }
    }
}

/// Parsed BTF: the type index over a borrowed blob.
#[derive(Debug)]
pub struct Btf<'a> {
    types_data: &'a [u8],
    strings: &'a [u8],
    big_endian: bool,
    /// Indexed by type id less [`Btf::first_id`] plus one; entry 0 (void)
    /// is a placeholder.
    types: Vec<TypeEntry>,
    /// For split BTF, the BTF it extends (the kernel's): its type ids come
    /// before this blob's and its strings before this blob's strings.
    base: Option<&'a Btf<'a>>,
}

impl<'a> Btf<'a> {
    /// Reads the header and indexes every record of the type section.
    pub fn parse(data: &'a [u8]) -> Result<Self, FormatError> {
        Self::parse_on(data, None)
    }

    /// Split BTF (a module's) over `base` (the kernel's, parsed).
    pub fn parse_split(data: &'a [u8], base: &'a Btf<'a>) -> Result<Self, FormatError> {
        Self::parse_on(data, Some(base))
    }

    /// The id of this blob's first type: 1, or the one after its base's last.
    fn first_id(&self) -> u32 {
        self.base.map_or(1, |base| base.first_id() + base.count())
    }

    /// How many types this blob itself defines.
    fn count(&self) -> u32 {
        u32::try_from(self.types.len() - 1).unwrap_or(u32::MAX)
    }

    fn parse_on(data: &'a [u8], base: Option<&'a Btf<'a>>) -> Result<Self, FormatError> {
        let magic_bytes = slice(data, 0, 2, "header")?;
        let big_endian = match [magic_bytes[0], magic_bytes[1]] {
            m if u16::from_le_bytes(m) == MAGIC => false,
            m if u16::from_be_bytes(m) == MAGIC => true,
            m => {
                return Err(FormatError::BadMagic {
                    found: u16::from_le_bytes(m),
                });
            }
        };
        let header = slice(data, 0, HEADER_LEN, "header")?;
        let version = header[2];
        if version != 1 {
            return Err(FormatError::Version { version });
        }
        let word = |at: usize| read_u32(header, at, big_endian, "header");
        let hdr_len = word(4)? as usize;
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let body = data.get(hdr_len..).ok_or(FormatError::Truncated {
            what: "header",
            start: 0,
            end: hdr_len,
            len: data.len(),
        })?;
        let types_data =
            slice(body, type_off, type_len, "type section").map_err(|e| shift(e, hdr_len))?;
        let strings =
            slice(body, str_off, str_len, "string section").map_err(|e| shift(e, hdr_len))?;

        let mut btf = Btf {
            types_data,
            strings,
            big_endian,
            types: vec![TypeEntry {
                offset: 0,
                name_off: 0,
                kind: 0,
                kind_flag: false,
                vlen: 0,
                size_or_type: 0,
            }],
            base,
        };
        let first_id = btf.first_id();
        let mut offset = 0;
        while offset < types_data.len() {
            let type_id = u32::try_from(btf.types.len() - 1)
                .unwrap_or(u32::MAX)
                .saturating_add(first_id);
            let name_off = btf.word(offset, "type record")?;
            let info = btf.word(offset + 4, "type record")?;
            let size_or_type = btf.word(offset + 8, "type record")?;
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as u16;
            let extra = match kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * usize::from(vlen),
                kind::ENUM | kind::FUNC_PROTO => 8 * usize::from(vlen),
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                _ => return Err(FormatError::UnknownKind { type_id, kind }),
            };
            let end = offset + TYPE_LEN + extra;
            if end > types_data.len() {
                return Err(FormatError::Truncated {
                    what: "type record",
                    start: offset,
                    end,
                    len: types_data.len(),
                });
            }
            btf.types.push(TypeEntry {
                offset,
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type,
            });
            offset = end;
        }
        Ok(btf)
    }

    /// Byte offset of `member` in struct `struct_name`. `member` may be a
    /// dotted path through embedded structs (`f_path.dentry`); each step may
    /// sit inside anonymous structs or unions, whose offsets are added.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, LookupError> {
        byte_offset(
            struct_name,
            member,
            self.member_bit_offset(struct_name, member)?,
        )
    }

    /// [`Btf::member_offset`] of a member the programs read as `width`:
    /// one of another size, or a bitfield, is refused, as a read of it
    /// would take the wrong bytes.
    pub fn member_offset_of(
        &self,
        struct_name: &str,
        member: &str,
        width: Width,
    ) -> Result<u32, LookupError> {
        let found = self.locate(struct_name, member)?;
        let offset = byte_offset(struct_name, member, found.bits)?;
        let size = if found.bitfield_size != 0 {
            None
        } else {
            self.type_size(found.type_id, 0)?
        };
        let fits = match (size, width) {
            (Some(size), Width::Bytes(n)) => size == u64::from(n),
            (Some(size), Width::AtLeast(n)) => size >= u64::from(n),
            (None, _) => false,
        };
        if fits {
            return Ok(offset);
        }
        Err(LookupError::Width {
            struct_name: struct_name.to_owned(),
            member: member.to_owned(),
            expected: width,
            found: match size {
                Some(size) => format!("{size} bytes"),
                None if found.bitfield_size != 0 => {
                    format!("a {}-bit bitfield", found.bitfield_size)
                }
                None => "a bitfield, or of no fixed size".to_owned(),
            },
        })
    }

    /// Bit offset of `member` in struct `struct_name` (as
    /// [`Btf::member_offset`] finds it): a bitfield's too.
    pub fn member_bit_offset(&self, struct_name: &str, member: &str) -> Result<u64, LookupError> {
        Ok(self.locate(struct_name, member)?.bits)
    }

    /// Where `member` of struct `struct_name` is, and its type (see
    /// [`Btf::member_offset`]).
    fn locate(&self, struct_name: &str, member: &str) -> Result<Located, LookupError> {
        let mut type_id = self.find_struct(struct_name)?;
        let mut bits: u64 = 0;
        let mut owner = struct_name.to_owned();
        let mut steps = member.split('.').peekable();
        while let Some(step) = steps.next() {
            let (found_bits, found) = self
                .find_member(type_id, step, 0, &mut HashSet::from([type_id]))?
                .ok_or_else(|| LookupError::MemberNotFound {
                    struct_name: owner.clone(),
                    member: step.to_owned(),
                })?;
            bits += found_bits;
            let Some(next) = steps.peek() else {
                return Ok(Located {
                    bits,
                    type_id: found.type_id,
                    bitfield_size: found.bitfield_size,
                });
            };
            let resolved = self.skip_modifiers(found.type_id)?;
            if !matches!(self.entry(resolved)?.1.kind, kind::STRUCT | kind::UNION) {
                return Err(LookupError::NotAggregate {
                    struct_name: owner,
                    member: step.to_owned(),
                    next: (*next).to_owned(),
                });
            }
            type_id = resolved;
            owner = format!("{owner}.{step}");
        }
        // (`split` yields at least one step: the loop returns.)
        Err(LookupError::MemberNotFound {
            struct_name: owner,
            member: String::new(),
        })
    }

    /// The size in bytes of type `type_id`; `None` for an integer that is
    /// a bitfield (fewer bits than its bytes, or shifted) and for types of
    /// no size (functions, void).
    fn type_size(&self, type_id: u32, depth: usize) -> Result<Option<u64>, LookupError> {
        let resolved = self.skip_modifiers(type_id)?;
        let (owner, entry) = self.entry(resolved)?;
        let size = u64::from(entry.size_or_type);
        Ok(match entry.kind {
            kind::INT => {
                let encoding = owner.word(entry.offset + TYPE_LEN, "int encoding")?;
                let (bits, shift) = (encoding & 0xff, (encoding >> 16) & 0xff);
                (u64::from(bits) == size * 8 && shift == 0).then_some(size)
            }
            // The kernels loopwarden runs on are 64-bit.
            kind::PTR => Some(8),
            kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::FLOAT => Some(size),
            kind::ARRAY if depth < MAX_DEPTH => {
                let at = entry.offset + TYPE_LEN;
                let element = owner.word(at, "array")?;
                let count = owner.word(at + 8, "array")?;
                self.type_size(element, depth + 1)?
                    .and_then(|each| each.checked_mul(u64::from(count)))
            }
            _ => None,
        })
    }

    /// Id of the first `STRUCT` (not a forward declaration) named `name`
    /// that this blob defines (for split BTF, not its base).
    fn find_struct(&self, name: &str) -> Result<u32, LookupError> {
        for (index, entry) in self.types.iter().enumerate().skip(1) {
            if entry.kind == kind::STRUCT && self.name(entry.name_off)? == name.as_bytes() {
                let index = u32::try_from(index - 1).unwrap_or(u32::MAX);
                return Ok(self.first_id().saturating_add(index));
            }
        }
        Err(LookupError::StructNotFound {
            name: name.to_owned(),
        })
    }

    /// Bit offset and type of the member `name` of struct/union `type_id`,
    /// looking inside anonymous members. `searched` holds the types already
    /// looked into: one that did not have the member the first time is not
    /// searched again, so a blob whose anonymous members refer to one type
    /// many times, or to themselves, costs one pass over its members instead
    /// of exponential time.
    fn find_member(
        &self,
        type_id: u32,
        name: &str,
        depth: usize,
        searched: &mut HashSet<u32>,
    ) -> Result<Option<(u64, Member)>, LookupError> {
        let (owner, entry) = self.entry(type_id)?;
        for index in 0..usize::from(entry.vlen) {
            let member = owner.member(entry, index)?;
            if member.name_off != 0 {
                if self.name(member.name_off)? == name.as_bytes() {
                    return Ok(Some((u64::from(member.bit_offset), member)));
                }
                continue;
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            let inner = self.skip_modifiers(member.type_id)?;
            if !matches!(self.entry(inner)?.1.kind, kind::STRUCT | kind::UNION)
                || !searched.insert(inner)
            {
                continue;
            }
            if let Some((bits, found)) = self.find_member(inner, name, depth + 1, searched)? {
                return Ok(Some((u64::from(member.bit_offset) + bits, found)));
            }
        }
        Ok(None)
    }

    /// Follows typedef, const, volatile, restrict and type tags to the
    /// underlying type.
    fn skip_modifiers(&self, mut type_id: u32) -> Result<u32, LookupError> {
        for _ in 0..MAX_DEPTH {
            let (_, entry) = self.entry(type_id)?;
            match entry.kind {
                kind::TYPEDEF | kind::CONST | kind::VOLATILE | kind::RESTRICT | kind::TYPE_TAG => {
                    type_id = entry.size_or_type;
                }
                _ => return Ok(type_id),
            }
        }
        Ok(type_id)
    }

    /// The record of type `type_id` and the blob holding it (this one, or
    /// for an id below [`Btf::first_id`], its base).
    fn entry(&self, type_id: u32) -> Result<(&Btf<'a>, TypeEntry), LookupError> {
        let first = self.first_id();
        if type_id < first {
            return match self.base {
                Some(base) => base.entry(type_id),
                None => Err(LookupError::BadTypeId { type_id }),
            };
        }
        usize::try_from(type_id - first + 1)
            .ok()
            .and_then(|index| self.types.get(index))
            .map(|entry| (self, *entry))
            .ok_or(LookupError::BadTypeId { type_id })
    }

    /// The `index`th `btf_member` of a struct or union; the bit offset is
    /// decoded (low 24 bits when the type's kind_flag marks bitfields).
    fn member(&self, entry: TypeEntry, index: usize) -> Result<Member, FormatError> {
        let at = entry.offset + TYPE_LEN + index * 12;
        let raw_offset = self.word(at + 8, "struct member")?;
        Ok(Member {
            name_off: self.word(at, "struct member")?,
            type_id: self.word(at + 4, "struct member")?,
            bit_offset: if entry.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            },
            bitfield_size: if entry.kind_flag { raw_offset >> 24 } else { 0 },
        })
    }

    /// The NUL-terminated name at `offset` in the string section (for
    /// split BTF, the base's strings come first).
    fn name(&self, offset: u32) -> Result<&'a [u8], FormatError> {
        let local = match self.base {
            Some(base) => {
                let before = u32::try_from(base.strings_len()).unwrap_or(u32::MAX);
                if offset < before {
                    return base.name(offset);
                }
                offset - before
            }
            None => offset,
        };
        let rest = usize::try_from(local)
            .ok()
            .and_then(|o| self.strings.get(o..))
            .ok_or(FormatError::BadString { offset })?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FormatError::BadString { offset })?;
        Ok(&rest[..end])
    }

    /// Bytes of string section in this blob and its bases: where the
    /// string offsets of a blob split from it begin.
    fn strings_len(&self) -> usize {
        self.base.map_or(0, Btf::strings_len) + self.strings.len()
    }

    fn word(&self, at: usize, what: &'static str) -> Result<u32, FormatError> {
        read_u32(self.types_data, at, self.big_endian, what)
    }
}

/// The byte offset of `member` of `struct_name` found at bit `bits`.
fn byte_offset(struct_name: &str, member: &str, bits: u64) -> Result<u32, LookupError> {
    if !bits.is_multiple_of(8) {
        return Err(LookupError::Unaligned {
            struct_name: struct_name.to_owned(),
            member: member.to_owned(),
            bit_offset: bits,
        });
    }
    u32::try_from(bits / 8).map_err(|_| LookupError::TooFar {
        struct_name: struct_name.to_owned(),
        member: member.to_owned(),
        bit_offset: bits,
    })
}

fn slice<'d>(
    data: &'d [u8],
    start: usize,
    len: usize,
    what: &'static str,
) -> Result<&'d [u8], FormatError> {
    let end = start.saturating_add(len);
    data.get(start..end).ok_or(FormatError::Truncated {
        what,
        start,
        end,
        len: data.len(),
    })
}

fn read_u32(
    data: &[u8],
    at: usize,
    big_endian: bool,
    what: &'static str,
) -> Result<u32, FormatError> {
    let bytes: [u8; 4] =
        slice(data, at, 4, what)?
            .try_into()
            .map_err(|_| FormatError::Truncated {
                what,
                start: at,
                end: at + 4,
                len: data.len(),
            })?;
    Ok(if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

/// Makes a section-relative truncation error file-relative.
fn shift(error: FormatError, by: usize) -> FormatError {
    match error {
        FormatError::Truncated {
            what,
            start,
            end,
            len,
        } => FormatError::Truncated {
            what,
            start: start.saturating_add(by),
            end: end.saturating_add(by),
            len: len.saturating_add(by),
        },
        other => other,
    }
}
