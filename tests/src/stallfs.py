"""A read-only FUSE filesystem of one executable, `tool` (a copy of SRC),
that answers every request but those of whom STALL names, which it never
answers: a FUSE server that stops answering whoever looks. STALL is
`thread:TID` (one thread), `process:PID` (every thread of a process) or
`exe:PATH` (every thread of every process running PATH). With `reads`,
only their reads of the file's contents go unanswered: a server that
answers lookups and fetches contents on demand from somewhere gone. With
`all-but-probes`, all but what loopwarden's probe of the mount asks (the
root's attributes, a lookup of a name it makes up): a server that stops
answering right after the probe.
With STALLFS_USER_ID in the environment, the mount says that user made it
(`user_id=`, as `fusermount` run by that user writes it).
Stdlib only.
Usage: stallfs.py MOUNTPOINT SRC STALL [reads|all-but-probes]"""
import ctypes, errno, os, struct, sys

mnt, src = sys.argv[1], sys.argv[2]
kind, _, who = sys.argv[3].partition(":")
assert kind in ("thread", "process", "exe"), sys.argv[3]
only = sys.argv[4] if sys.argv[4:] else "all"
assert only in ("all", "reads", "all-but-probes"), only


def unanswered(opcode, node, arg):
    """Whether a request of whom STALL names goes unanswered."""
    if only == "reads":
        return opcode == 15
    if only == "all-but-probes":
        probe = opcode == 1 and arg.startswith(b".loopwarden-probe-")
        return not (probe or (opcode == 3 and node == ROOT))
    return True


def tgid(pid):
    """The process of thread `pid`, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def stalled(pid):
    """Whether a request of thread `pid` goes unanswered."""
    if kind == "thread":
        return pid == int(who)
    process = tgid(pid)
    if kind == "process":
        return process == int(who)
    try:
        return process is not None and os.readlink(f"/proc/{process}/exe") == who
    except OSError:
        return False

data = open(src, "rb").read()
fd = os.open("/dev/fuse", os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
user = int(os.environ.get("STALLFS_USER_ID", "0"))
opts = f"fd={fd},rootmode=40000,user_id={user},group_id={user},allow_other,default_permissions"
if libc.mount(b"lwstall", mnt.encode(), b"fuse", 0, opts.encode()) != 0:
    raise OSError(ctypes.get_errno(), "mount " + mnt)
print("mounted", flush=True)

ROOT, FILE = 1, 2
IN = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")


def attr(node):
    if node == ROOT:
        return ATTR.pack(ROOT, 0, 0, 0, 0, 0, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)
    return ATTR.pack(FILE, len(data), (len(data) + 511) // 512, 0, 0, 0, 0, 0, 0,
                     0o100755, 1, 0, 0, 0, 4096, 0)


def reply(unique, error=0, body=b""):
    os.write(fd, OUT.pack(OUT.size + len(body), -error, unique) + body)


while True:
    try:
        req = os.read(fd, (1 << 20) + 8192)
    except OSError as e:
        if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
            continue
        break  # ENODEV: unmounted
    length, opcode, unique, node, uid, gid, pid, _, _ = IN.unpack_from(req)
    arg = req[IN.size:length]
    if opcode in (2, 36, 42):  # FORGET, INTERRUPT, BATCH_FORGET: no reply
        continue
    if unanswered(opcode, node, arg) and stalled(pid):
        continue  # never answered
    if opcode == 26:  # INIT
        major, minor, readahead = struct.unpack_from("<III", arg)
        body = struct.pack("<IIIIHHIIHH", 7, 31, readahead, 0, 16, 12, 1 << 17, 1, 32, 0)
        reply(unique, 0, body.ljust(64, b"\0"))
    elif opcode == 1:  # LOOKUP
        if node == ROOT and arg.rstrip(b"\0") == b"tool":
            # Nothing cached: every stat() asks.
            reply(unique, 0, struct.pack("<QQQQII", FILE, 0, 0, 0, 0, 0) + attr(FILE))
        else:
            reply(unique, errno.ENOENT)
    elif opcode == 3:  # GETATTR
        reply(unique, 0, struct.pack("<QII", 0, 0, 0) + attr(node))
    elif opcode in (14, 27):  # OPEN, OPENDIR
        reply(unique, 0, struct.pack("<QII", 1, 0, 0))
    elif opcode == 15:  # READ
        _, offset, size = struct.unpack_from("<QQI", arg)
        reply(unique, 0, data[offset:offset + size])
    elif opcode in (18, 25, 29):  # RELEASE, FLUSH, RELEASEDIR
        reply(unique)
    else:
        reply(unique, errno.ENOSYS)
