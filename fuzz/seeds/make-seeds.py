#!/usr/bin/env python3
"""Writes the binary fuzz seeds (event records, BTF blobs); the text seeds are plain copies."""
import struct, os
S = os.path.dirname(os.path.abspath(__file__))

# --- event: one ConnectEvent (common/src/lib.rs), 160 bytes, as the kernel writes it.
comm = b"socat".ljust(16, b"\0")
exe_name = b"socat".ljust(32, b"\0")
daddr = bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])  # ::ffff:127.0.0.1
# ktime, policy_seq, socket cookie, netns cookie, start time, cgroup id, exe dev, exe ino
ev = struct.pack("<QQQQQQQQ", 12_345_678_901, 2, 7, 4026531840, 987_654_000_000, 1,
                 (254 << 20) | 1, 4242)
ev += daddr
ev += struct.pack("<IIIIIHHBBHI", 4242, 4243, 1, 0, 0, 8080, 2, 3, 0, 0, 0)  # DENY, rule 0
ev += comm + exe_name
assert len(ev) == 160, len(ev)
open(f"{S}/event/socat-deny-v4", "wb").write(ev)
ev6 = bytearray(ev)
ev6[64:80] = bytes(15) + b"\x01"               # ::1
struct.pack_into("<HH", ev6, 100, 22, 10)      # port 22, AF_INET6
ev6[104] = 1; ev6[105] = 255                   # audit, NO_RULE
ev6[112:128] = b"ssh\n\"x\x1b".ljust(16, b"\0")  # a comm that needs quoting
open(f"{S}/event/odd-comm-v6", "wb").write(bytes(ev6))

# --- btf: the structures and members offsets_from reads, plus one record of
# every other kind, little- and big-endian.
def btf(endian):
    strings = bytearray(b"\0")
    def s(name):
        if not name: return 0
        off = len(strings); strings.extend(name.encode() + b"\0"); return off
    types = bytearray()
    ids = [0]
    def w(*words): types.extend(struct.pack(endian + "I" * len(words), *words))
    def ty(name, kind, vlen=0, size_or_type=0, kflag=0):
        w(s(name), (kflag << 31) | (kind << 24) | vlen, size_or_type)
        ids[0] += 1; return ids[0]
    def agg(kind, name, size, members, kflag=0):
        i = ty(name, kind, len(members), size, kflag)
        for m, t, off in members: w(s(m), t, off)
        return i
    INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)
    u32 = ty("u32", INT, 0, 4); w(32)
    u64 = ty("u64", INT, 0, 8); w(64)
    u16 = ty("u16", INT, 0, 2); w(16)
    u8 = ty("u8", INT, 0, 1); w(8)
    ptr = ty("", PTR, 0, 0)
    arr = ty("", ARRAY); w(u32, u32, 4)
    arr32 = ty("", ARRAY); w(u32, u32, 8)
    en = ty("e", ENUM, 1, 4); w(s("E0"), 0)
    proto = ty("", PROTO, 1, u32); w(0, u64)
    fn = ty("f", FUNC, 0, proto)
    var = ty("v", VAR, 0, u32); w(1)
    ty(".data", DATASEC, 1, 4); w(var, 0, 4)
    ty("double", FLOAT, 0, 8)
    ty("tag", DECL_TAG, 0, fn); w(0xffffffff)
    ty("user", TYPE_TAG, 0, ptr)
    ty("e64", ENUM64, 1, 8); w(s("E1"), 1, 0)
    vol = ty("", VOLATILE, 0, u32)
    vol8 = ty("", VOLATILE, 0, u8)
    ty("", RESTRICT, 0, ptr)
    cptr = ty("", CONST, 0, ptr)
    hl = agg(STRUCT, "", 8, [("hash", u32, 0), ("len", u32, 32)])
    un = agg(UNION, "", 8, [("", hl, 0), ("hash_len", u64, 0)])
    qstr = agg(STRUCT, "qstr", 16, [("", un, 0), ("name", cptr, 64)])
    agg(STRUCT, "dentry", 64, [("d_flags", vol, 0), ("d_parent", ptr, 64), ("d_name", qstr, 128),
        ("d_iname", arr32, 256)])
    path = agg(STRUCT, "path", 16, [("mnt", ptr, 0), ("dentry", ptr, 64)])
    path_t = ty("path_t", TYPEDEF, 0, path)
    agg(STRUCT, "file", 64, [("f_lock", u32, 0), ("f_path", path_t, 64), ("f_inode", ptr, 192),
        ("private_data", ptr, 256)])
    agg(STRUCT, "files_struct", 64, [("count", u32, 0), ("fdt", ptr, 64)])
    agg(STRUCT, "fdtable", 32, [("max_fds", u32, 0), ("fd", ptr, 64), ("open_fds", ptr, 192)])
    agg(STRUCT, "socket", 64, [("state", u32, 0), ("sk", ptr, 256)])
    agg(STRUCT, "inode", 128, [("i_mode", u16, 0), ("i_sb", ptr, 320), ("i_ino", u64, 512)])
    agg(STRUCT, "super_block", 64, [("s_list", u64, 0), ("s_dev", u32, 128), ("s_magic", u64, 192)])
    agg(STRUCT, "mm_struct", 64, [("mmap", ptr, 0), ("exe_file", ptr, 448),
        ("arg_start", u64, 256), ("arg_end", u64, 320)])
    pnet = agg(STRUCT, "", 8, [("net", ptr, 0)])
    addrs = agg(STRUCT, "", 8, [("skc_daddr", u32, 0), ("skc_rcv_saddr", u32, 32)])
    common = agg(STRUCT, "sock_common", 128, [("", addrs, 0), ("skc_dport", u16, 96),
        ("skc_num", u16, 112), ("skc_family", u16, 128), ("skc_state", vol8, 144),
        ("skc_net", pnet, 192),
        ("skc_v6_daddr", arr, 256), ("skc_v6_rcv_saddr", arr, 384), ("skc_cookie", u64, 512)])
    lock = agg(STRUCT, "", 8, [("slock", u32, 0), ("owned", u32, 32)])
    lock_t = ty("socket_lock_t", TYPEDEF, 0, lock)
    agg(STRUCT, "sock", 256, [("__sk_common", common, 0), ("sk_protocol", u16, 1024),
        ("sk_uid", u32, 1088), ("sk_lock", lock_t, 1152)])
    ns = agg(STRUCT, "ns_common", 16, [("stashed", ptr, 0), ("inum", u32, 64)])
    agg(STRUCT, "net", 64, [("passive", u32, 0), ("ns", ns, 128), ("net_cookie", u64, 256)])
    inet = agg(STRUCT, "inet_sock", 128, [("inet_saddr", u32, 0), ("inet_sport", u16, 512)])
    icsk = agg(STRUCT, "inet_connection_sock", 256, [("icsk_inet", inet, 0)])
    agg(STRUCT, "tcp_sock", 512, [("inet_conn", icsk, 0), ("rcv_nxt", u32, 2048),
        ("bytes_received", u64, 2112), ("snd_una", u32, 2176), ("bytes_acked", u64, 2240)])
    kuid = agg(STRUCT, "", 4, [("val", u32, 0)])
    kuid_t = ty("kuid_t", TYPEDEF, 0, kuid)
    agg(STRUCT, "cred", 64, [("usage", u32, 0), ("uid", kuid_t, 32), ("gid", kuid_t, 64)])
    agg(STRUCT, "css_set", 64, [("subsys", ptr, 0), ("dfl_cgrp", ptr, 128)])
    agg(STRUCT, "cgroup", 64, [("self", u64, 0), ("kn", ptr, 256)])
    agg(STRUCT, "kernfs_node", 64, [("count", u32, 0), ("id", u64, 320)])
    ty("task_struct", FWD)
    agg(STRUCT, "task_struct", 256, [
        ("__state", u32, 0), ("flags", u32, 32), ("bits", u32, (3 << 24) | 64), ("mm", ptr, 512),
        ("pid", u32, 768), ("tgid", u32, 800), ("real_parent", ptr, 1024), ("group_leader", ptr, 1088),
        ("start_boottime", u64, 1280), ("comm", arr, 1536), ("", arr, 1664), ("files", ptr, 1792),
        ("cred", ptr, 1856), ("cgroups", ptr, 1920)],
        kflag=1)
    magic = struct.pack(endian + "HBB", 0xeb9f, 1, 0)
    hdr = magic + struct.pack(endian + "IIIII", 24, 0, len(types), len(types), len(strings))
    return hdr + bytes(types) + bytes(strings)
open(f"{S}/btf/structs-le.btf", "wb").write(btf("<"))
open(f"{S}/btf/structs-be.btf", "wb").write(btf(">"))
