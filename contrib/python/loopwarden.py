"""Ask loopwarden who is on the other end of a TCP connection you accepted.

loopwarden judges every connect() to a protected local port in the kernel
and binds what it saw (the calling process, the verdict, and whether a
network-facing process made the connect on someone else's behalf) to the
connection. This module (standard library only, Python 3.9+) reads it back:

- ``origin(sock)``: one ``getsockopt(SOL_LOOPWARDEN, LW_ORIGIN)`` on the
  accepted socket. Returns an ``Origin``, ``None`` when loopwarden knows
  nothing of the connection, and raises ``NotAnswering`` when loopwarden's
  program is not attached at all.
- ``who(peer, local)`` / ``conns()``: the daemon's query socket, which adds
  the user name, executable path and command line.

The protocol is in loopwarden's README, "Asking loopwarden from your
service". Example::

    conn, _ = listener.accept()
    o = loopwarden.origin(conn)
    if o is None or not o.is_direct:
        # Relayed to us by o.exe_name (pid o.pid) for o.via, or unknown:
        # never take a connection loopwarden knows nothing of for a local
        # user's (a relay holding more connections open than loopwarden
        # keeps origins for makes its oldest unknown).
        conn.close()
"""

import errno
import ipaddress
import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

__all__ = [
    "SOL_LOOPWARDEN",
    "LW_ORIGIN",
    "RECORD_SIZE",
    "DEFAULT_QUERY_PATH",
    "NotAnswering",
    "BadRecord",
    "QueryError",
    "Via",
    "Origin",
    "origin",
    "decode",
    "who",
    "who_cookie",
    "conns",
]

SOL_LOOPWARDEN = 0x4C57
"""The private getsockopt level loopwarden answers ("LW")."""
LW_ORIGIN = 1
"""The option at SOL_LOOPWARDEN: the connection's origin record."""
RECORD_SIZE = 328
"""Bytes of a version-1 origin record."""
_BUFFER = 512  # what getsockopt is given: the record and what a later version appends
DEFAULT_QUERY_PATH = "/run/loopwarden/query.sock"
"""Where the daemon serves its query socket by default."""

_MAGIC = 0x524F574C  # "LWOR", little-endian
_VERSION = 1
_KNOWN, _UNKNOWN = 1, 0
_NO_RULE, _RELAY_RULE = 255, 254

# The record, native byte order, padding spelled out (common/src/origin.rs).
_RECORD = struct.Struct(
    "=IHHB3xIQQ"  # magic version size status pad server_uid established server_cookie
    "IHH16s16s"  # conn: netns client_port server_port client server
    "QQQQQQ"  # ktime policy_seq socket_cookie netns_cookie start_boottime cgroup_id
    "16s16s"  # exe (dev, ino) daddr
    "IIIIIHH"  # tgid pid ppid uid gid dport family
    "BBB1x4x"  # verdict rule forked pad
    "16s32s"  # comm exe_name
    "16sQHB5x"  # via: addr ktime port kind pad
    "64s"  # script
)
assert _RECORD.size == RECORD_SIZE

_VERDICTS = {0: "allow", 1: "audit", 2: "would-deny", 3: "deny"}
_HOWS = {1: "listening", 2: "accepted", 3: "received", 4: "connected", 5: "stdio", 6: "untracked"}


class NotAnswering(OSError):
    """Nothing answers SOL_LOOPWARDEN on this socket (ENOPROTOOPT/EOPNOTSUPP).

    loopwarden's getsockopt program is not attached here: the daemon never
    ran, was detached, runs with ``[provenance] getsockopt = false``, or its
    ``getsockopt_cgroups`` do not hold this process. Unlike ``origin()``
    returning ``None``, this says nothing about the connection. (Where the
    program is attached, every socket gets an answer: one that is not TCP,
    as a TCP connection loopwarden did not tag, gets ``None``.)
    """


# NotAnswering's message: not taken from its docstring, which ``python
# -OO`` removes.
_NOT_ANSWERING = "Nothing answers SOL_LOOPWARDEN on this socket (ENOPROTOOPT/EOPNOTSUPP)."


class BadRecord(ValueError):
    """The answer is not a version-1 loopwarden origin record."""


class QueryError(Exception):
    """The query socket answered an error.

    ``code`` is the protocol's error token: ``forbidden`` (a caller other
    than root named another network namespace; another uid's connection is
    ``unknown``, as one that is not open: None), ``bad-request``, ``too-long``, ``timeout``
    (the request took the daemon too long to receive), ``busy`` (too many
    of this uid's clients at once), ``unavailable`` (the daemon cannot
    read its connection table, or the caller's network namespace); or
    this module's own: ``connect`` (no daemon answers at the path), ``io``
    (sending or reading failed, or no answer within the timeout),
    ``closed`` (the daemon closed the connection without answering),
    ``protocol`` (the answer was not what the protocol says).
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"loopwarden query failed ({code}): {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Via:
    """What made the caller network-facing: the party it relayed for."""

    host: str
    """The non-local peer (for ``listening``, the listening address)."""
    port: int
    how: str
    """``listening``, ``accepted``, ``received``, ``connected``, ``stdio`` (or ``unknown``)."""
    ago_ms: Optional[int]
    """How long before the connect() it was seen; None for ``listening`` and ``untracked``."""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Origin:
    """Who called connect(), as the kernel saw it then, and the verdict."""

    pid: int
    tid: int
    ppid: int
    forked: bool
    """The caller's process had executed nothing since the fork that made it
    (it runs its parent's program, as socat's per-connection child does):
    its parent's command line speaks for it."""
    uid: int
    gid: int
    comm: str
    exe_name: str
    exe: Tuple[int, int, int]
    """The executable's file: device major, minor and inode, as ``stat()``
    gives them (the audit lines' ``exe_id``)."""
    start_boottime_ns: int
    """The caller's process start (CLOCK_BOOTTIME): with ``pid``, names the
    process even after its pid is reused."""
    script: Optional[str]
    verdict: str
    """``allow``, ``audit``, ``would-deny`` (``deny`` never connects)."""
    rule: Optional[Union[int, str]]
    """The deciding rule's index, ``"relay"`` for the relay verdict, or None."""
    via: Optional[Via]
    client: Tuple[str, int]
    server: Tuple[str, int]
    netns: int
    cgroup_id: int
    connected_ns: int
    """CLOCK_MONOTONIC at the connect()."""
    established_ns: int
    """CLOCK_MONOTONIC when the server's side of the handshake completed."""
    server_uid: int
    server_cookie: int
    client_cookie: int

    @property
    def is_direct(self) -> bool:
        """A local process connected by itself: allowed, and no relay evidence."""
        return self.verdict == "allow" and self.via is None


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _ip(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped or ip)


def decode(data: bytes) -> Optional[Origin]:
    """Checks and decodes an origin record; None for status unknown.

    Raises BadRecord for a short, foreign or other-version record.
    """
    if len(data) < RECORD_SIZE:
        raise BadRecord(f"the origin record is {len(data)} bytes, shorter than {RECORD_SIZE}")
    (
        magic, version, size, status, server_uid, established, server_cookie,
        netns, client_port, server_port, client, server,
        ktime, _policy_seq, client_cookie, _netns_cookie, start, cgroup_id,
        exe, _daddr,
        tgid, tid, ppid, uid, gid, _dport, _family,
        verdict, rule, forked,
        comm, exe_name,
        via_addr, via_ktime, via_port, via_kind,
        script,
    ) = _RECORD.unpack_from(data)  # fmt: skip
    if magic != _MAGIC:
        raise BadRecord(f"not a loopwarden origin record: magic {magic:#010x}")
    if version != _VERSION:
        raise BadRecord(f"origin record version {version}; this module reads {_VERSION}")
    if size < RECORD_SIZE:
        raise BadRecord(f"the origin record says it is {size} bytes, less than {RECORD_SIZE}")
    if status == _UNKNOWN:
        return None
    if status != _KNOWN:
        raise BadRecord(f"origin record status {status} is neither 1 (known) nor 0 (unknown)")
    via = None
    if via_kind:
        how = _HOWS.get(via_kind, "unknown")
        ago = None if how in ("listening", "untracked") else max(ktime - via_ktime, 0) // 1_000_000
        via = Via(_ip(via_addr), via_port, how, ago)
    script_text = _text(script)
    exe_dev, exe_ino = struct.unpack("=QQ", exe)
    return Origin(
        pid=tgid,
        tid=tid,
        ppid=ppid,
        forked=forked == 1,
        uid=uid,
        gid=gid,
        comm=_text(comm),
        exe_name=_text(exe_name),
        # The kernel's dev_t: 12 bits of major above 20 of minor.
        exe=(exe_dev >> 20, exe_dev & 0xFFFFF, exe_ino),
        start_boottime_ns=start,
        script=script_text or None,
        verdict=_VERDICTS.get(verdict, "unknown"),
        rule=None if rule == _NO_RULE else "relay" if rule == _RELAY_RULE else rule,
        via=via,
        client=(_ip(client), client_port),
        server=(_ip(server), server_port),
        netns=netns,
        cgroup_id=cgroup_id,
        connected_ns=ktime,
        established_ns=established,
        server_uid=server_uid,
        server_cookie=server_cookie,
        client_cookie=client_cookie,
    )


def origin(sock: Any) -> Optional[Origin]:
    """The origin of the connection on ``sock``, an accepted TCP socket.

    ``sock`` is anything with ``getsockopt`` (a ``socket.socket``, the
    ``TransportSocket`` asyncio hands out). Returns None when loopwarden
    knows nothing of the connection (a port it does not protect, a
    connection older than the tag, one whose origin was pushed out while
    more connections were open than ``[provenance] connections`` keeps):
    treat that as untrusted. Raises NotAnswering when loopwarden's program
    does not answer; BadRecord when something else did.
    """
    try:
        # Room for fields later versions append; the answer is as long as
        # the record.
        data = sock.getsockopt(SOL_LOOPWARDEN, LW_ORIGIN, _BUFFER)
    except OSError as e:
        if e.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            raise NotAnswering(e.errno, _NOT_ANSWERING) from e
        raise
    return decode(data)


def _addr(a: Union[str, Tuple]) -> str:
    """``host:port`` text of an address given as text or a socket tuple."""
    if isinstance(a, str):
        return a
    host, port = a[0], a[1]
    # A link-local peer reads ``fe80::1%eth0``: the connection is known
    # by its address alone, and the daemon takes no named scope.
    host = host.split("%", 1)[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# The longest answer line read (the Rust client's limit too): past it the
# answer is a protocol error, not memory without end.
_MAX_ANSWER = 256 << 20


def _deadline(timeout: Optional[float]) -> Optional[float]:
    """The ``time.monotonic()`` by which a request given ``timeout``
    seconds in all must end (None: it may wait forever)."""
    if timeout is None:
        return None
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return time.monotonic() + timeout


def _left(deadline: Optional[float], timeout: Optional[float]) -> Optional[float]:
    """The seconds left until ``deadline`` (None: no deadline); a timeout
    error once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise QueryError("io", f"no answer within {timeout} s")
    return left


def _connect(path: str, deadline: Optional[float], timeout: Optional[float]) -> socket.socket:
    """A connection to the query socket, made by ``deadline`` at most.
    With a timeout the connect is non-blocking, and a daemon whose backlog
    is full (stalled, or stopped) refuses it with EAGAIN at once (a Unix
    socket has no connect in progress to wait for): tried again, on a new
    socket, every few milliseconds until the deadline, as the Rust client
    does."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # (Past the deadline, a full backlog is the error to tell: below.)
        s.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.001))
        try:
            s.connect(path)
            return s
        except BlockingIOError as e:
            s.close()
            if deadline is None or time.monotonic() >= deadline:
                raise QueryError(
                    "io",
                    f"{path}: its backlog stayed full for {timeout} s (is the daemon stalled?)",
                ) from e
            time.sleep(0.005)
        except OSError as e:
            s.close()
            raise QueryError(
                "connect",
                f"cannot connect to {path}: {e.strerror or e} "
                "(is the daemon running, with [provenance] query = true?)",
            ) from e


def _read_line(s: socket.socket, deadline: Optional[float], timeout: Optional[float]) -> bytes:
    """One line from ``s`` (with its newline; without one if the
    connection closed first, or past ``_MAX_ANSWER`` bytes), each read
    waiting only for what is left until ``deadline``: an answer that comes
    a little at a time cannot stretch the request past its timeout."""
    line = bytearray()
    while True:
        s.settimeout(_left(deadline, timeout))
        chunk = s.recv(65536)
        if not chunk:
            return bytes(line)
        end = chunk.find(b"\n")
        if end >= 0:
            return bytes(line + chunk[: end + 1])
        line += chunk
        if len(line) > _MAX_ANSWER:
            return bytes(line)


def _request(
    req: Dict[str, Any], path: str, timeout: Optional[float]
) -> Optional[Dict[str, Any]]:
    """One request on a fresh connection, ``timeout`` seconds in all (None:
    no limit): the answer, None for ``unknown``."""
    deadline = _deadline(timeout)
    with _connect(path, deadline, timeout) as s:
        try:
            try:
                s.settimeout(_left(deadline, timeout))
                s.sendall(json.dumps(req).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                # Closed by the daemon, which may have said why first (a
                # uid at its limit of clients is told ``busy``): read on.
                pass
            line = _read_line(s, deadline, timeout)
        except socket.timeout as e:
            raise QueryError("io", f"no answer within {timeout} s") from e
        except OSError as e:
            raise QueryError("io", f"talking to {path} failed: {e.strerror or e}") from e
    if len(line) > _MAX_ANSWER:
        raise QueryError("protocol", f"an answer line longer than {_MAX_ANSWER} bytes")
    if not line.endswith(b"\n"):
        # Nothing, or part of an answer: the daemon closed the connection
        # (to make room for others, or exiting) before it was whole.
        raise QueryError("closed", "the daemon closed the connection before answering")
    try:
        answer = json.loads(line)
    except ValueError as e:
        raise QueryError("protocol", f"not JSON: {line[:200]!r}") from e
    if not isinstance(answer, dict) or answer.get("v") != 1:
        raise QueryError("protocol", f"not a version-1 answer: {answer!r}")
    if answer.get("ok") is True:
        return answer
    code = str(answer.get("error", "protocol"))
    if code == "unknown":
        return None
    raise QueryError(code, str(answer.get("message", "")))


def _field(answer: Dict[str, Any], name: str, kind: type) -> Any:
    """``answer[name]``, which an ok answer must hold as a ``kind``."""
    value = answer.get(name)
    if not isinstance(value, kind):
        raise QueryError("protocol", f"no {name} {kind.__name__} in the answer: {answer!r}")
    return value


def who(
    peer: Union[str, Tuple],
    local: Union[str, Tuple],
    path: str = DEFAULT_QUERY_PATH,
    timeout: Optional[float] = 10.0,
) -> Optional[Dict[str, Any]]:
    """The origin of the connection ``peer`` -> ``local``, from the daemon.

    ``peer`` is ``sock.getpeername()`` of the accepted socket, ``local``
    its ``sock.getsockname()`` (tuples or ``"host:port"`` text). Returns the
    origin object (the audit line's fields plus the connection's), or None
    when loopwarden knows nothing of the connection. Raises QueryError.
    ``timeout`` bounds the whole request, connect included (seconds; None
    waits forever; not positive: ValueError).
    """
    req = {"op": "who", "peer": _addr(peer), "local": _addr(local)}
    answer = _request(req, path, timeout)
    return None if answer is None else _field(answer, "origin", dict)


def who_cookie(
    cookie: int, path: str = DEFAULT_QUERY_PATH, timeout: Optional[float] = 10.0
) -> Optional[Dict[str, Any]]:
    """The origin of the connection whose accepted socket has SO_COOKIE ``cookie``."""
    answer = _request({"op": "who", "cookie": cookie}, path, timeout)
    return None if answer is None else _field(answer, "origin", dict)


def conns(
    path: str = DEFAULT_QUERY_PATH, timeout: Optional[float] = 10.0
) -> List[Dict[str, Any]]:
    """Every tagged connection the caller may see (root: all), oldest first.

    The newest 4,096 at most: the daemon lists no more, and counts the rest
    in its answer's ``more``, which this drops.
    """
    answer = _request({"op": "conns"}, path, timeout)
    if answer is None:
        raise QueryError("protocol", "`unknown` answered to `conns`")
    return _field(answer, "conns", list)
