"""Unit tests of loopwarden.py: hand-built records, and the query client
against a fake query socket. Run: python3 -m unittest test_loopwarden
(from contrib/python); tests/tests/client.rs runs them too."""

import errno
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import loopwarden


def _addr(text):
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        ip = ipaddress.IPv6Address("::ffff:" + text)
    return ip.packed


def record(
    status=1, magic=0x524F574C, version=1, size=328, verdict=1, rule=254, via_kind=2, forked=1
):
    """socat (pid 4242, parent 4200) relaying 10.77.0.2:5555 to 127.0.0.1:8080."""
    return loopwarden._RECORD.pack(
        magic, version, size, status, 33, 5_000_100_000, 77,
        4026531840, 53422, 8080, _addr("127.0.0.1"), _addr("127.0.0.1"),
        5_000_000_000, 1, 76, 2, 1000, 9,
        struct.pack("=QQ", (259 << 20) | 3, 1234567), _addr("127.0.0.1"),
        4242, 4243, 4200, 1000, 100, 8080, 2,
        verdict, rule, forked,
        b"socat", b"py\xffthon",
        _addr("10.77.0.2"), 4_997_000_000, 5555, via_kind,
        b"/srv/fwd.py",
    )  # fmt: skip


class Decode(unittest.TestCase):
    def test_relayed(self):
        o = loopwarden.decode(record())
        self.assertEqual((o.pid, o.tid, o.ppid, o.uid, o.gid), (4242, 4243, 4200, 1000, 100))
        self.assertTrue(o.forked)
        self.assertFalse(loopwarden.decode(record(forked=0)).forked)
        self.assertEqual((o.comm, o.exe_name, o.script), ("socat", "py\ufffdthon", "/srv/fwd.py"))
        self.assertEqual((o.exe, o.start_boottime_ns), ((259, 3, 1234567), 1000))
        self.assertEqual((o.verdict, o.rule), ("audit", "relay"))
        self.assertEqual(o.via, loopwarden.Via("10.77.0.2", 5555, "accepted", 3))
        self.assertEqual(str(o.via), "10.77.0.2:5555")
        self.assertEqual((o.client, o.server), (("127.0.0.1", 53422), ("127.0.0.1", 8080)))
        self.assertFalse(o.is_direct)

    def test_direct(self):
        o = loopwarden.decode(record(verdict=0, rule=255, via_kind=0))
        self.assertEqual((o.verdict, o.rule, o.via), ("allow", None, None))
        self.assertTrue(o.is_direct)
        self.assertFalse(loopwarden.decode(record(verdict=2, rule=3, via_kind=0)).is_direct)

    def test_unknown(self):
        self.assertIsNone(loopwarden.decode(record(status=0)))

    def test_damaged(self):
        for bad, text in [
            (record(magic=0), "magic"),
            (record(version=2), "version 2"),
            (record(size=32), "32 bytes"),
            (record(status=7), "status 7"),
            (record()[:100], "100 bytes"),
        ]:
            with self.assertRaisesRegex(loopwarden.BadRecord, text):
                loopwarden.decode(bad)


class Addr(unittest.TestCase):
    def test_a_link_local_peer_is_sent_without_its_scope(self):
        self.assertEqual(loopwarden._addr(("fe80::1%eth0", 80, 0, 2)), "[fe80::1]:80")
        self.assertEqual(loopwarden._addr(("::1", 80, 0, 0)), "[::1]:80")
        self.assertEqual(loopwarden._addr(("127.0.0.1", 80)), "127.0.0.1:80")


class NotAnsweringSocket:
    """A socket on which nothing answers SOL_LOOPWARDEN."""

    def getsockopt(self, *args):
        raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))


class Origin(unittest.TestCase):
    def test_not_answering(self):
        with self.assertRaisesRegex(loopwarden.NotAnswering, "Nothing answers SOL_LOOPWARDEN"):
            loopwarden.origin(NotAnsweringSocket())

    def test_not_answering_without_docstrings(self):
        # python -OO drops docstrings: the error must not need them.
        script = (
            "import errno, loopwarden, test_loopwarden\n"
            "try:\n"
            "    loopwarden.origin(test_loopwarden.NotAnsweringSocket())\n"
            "except loopwarden.NotAnswering as e:\n"
            "    print('not answering:', e.errno == errno.ENOPROTOOPT, e)\n"
        )
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            [sys.executable, "-B", "-OO", "-c", script],
            cwd=here,
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        # (-OO drops assert statements too: the child prints, this checks.)
        self.assertIn("not answering: True ", out.stdout)


class Query(unittest.TestCase):
    def serve(self, answers, drip=0.0):
        """A fake query socket answering each request line from ``answers``
        (a byte every ``drip`` seconds, if set). A test that fails before
        it asked them all leaves no thread waiting: the cleanup shuts the
        listener down, and removes its directory."""
        d = tempfile.mkdtemp()
        path = os.path.join(d, "query.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen()
        self.requests = []

        def run():
            try:
                for answer in answers:
                    c, _ = listener.accept()
                    with c:
                        self.requests.append(json.loads(c.makefile("rb").readline()))
                        # "cut:" sends what follows without its newline,
                        # then closes: an answer cut short.
                        data = (
                            answer[4:].encode()
                            if answer.startswith("cut:")
                            else answer.encode() + b"\n"
                        )
                        if not drip:
                            c.sendall(data)
                            continue
                        for i in range(len(data)):
                            time.sleep(drip)
                            c.sendall(data[i : i + 1])
            except OSError:
                pass  # shut down by the cleanup, or the client gave up

        t = threading.Thread(target=run, daemon=True)
        t.start()

        def stop():
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
            t.join(10)
            shutil.rmtree(d, ignore_errors=True)

        self.addCleanup(stop)
        return path

    def test_who_and_conns(self):
        path = self.serve([
            '{"v":1,"ok":true,"origin":{"pid":7,"verdict":"allow"}}',
            '{"v":1,"ok":false,"error":"unknown","message":"no such connection"}',
            '{"v":1,"ok":true,"conns":[{"pid":7}]}',
            '{"v":1,"ok":true,"origin":{"pid":8}}',
        ])  # fmt: skip
        self.assertEqual(
            loopwarden.who(("::1", 53422, 0, 0), "127.0.0.1:8080", path=path)["pid"], 7
        )
        self.assertIsNone(loopwarden.who("127.0.0.1:1", "127.0.0.1:2", path=path))
        self.assertEqual(loopwarden.conns(path=path), [{"pid": 7}])
        self.assertEqual(loopwarden.who_cookie(4711, path=path)["pid"], 8)
        self.assertEqual(
            self.requests,
            [
                {"op": "who", "peer": "[::1]:53422", "local": "127.0.0.1:8080"},
                {"op": "who", "peer": "127.0.0.1:1", "local": "127.0.0.1:2"},
                {"op": "conns"},
                {"op": "who", "cookie": 4711},
            ],
        )

    def test_errors(self):
        path = self.serve([
            '{"v":1,"ok":false,"error":"forbidden","message":"not your netns"}',
            "not json",
            '{"v":1,"ok":true}',
            '{"v":1,"ok":true,"conns":{}}',
        ])  # fmt: skip
        with self.assertRaises(loopwarden.QueryError) as e:
            loopwarden.who_cookie(1, path=path)
        self.assertEqual((e.exception.code, e.exception.message), ("forbidden", "not your netns"))
        with self.assertRaises(loopwarden.QueryError) as e:
            loopwarden.conns(path=path)
        self.assertEqual(e.exception.code, "protocol")
        # An ok answer without what was asked for: the same, not a KeyError.
        with self.assertRaises(loopwarden.QueryError) as e:
            loopwarden.who("127.0.0.1:1", "127.0.0.1:2", path=path)
        self.assertEqual(e.exception.code, "protocol")
        with self.assertRaises(loopwarden.QueryError) as e:
            loopwarden.conns(path=path)
        self.assertEqual(e.exception.code, "protocol")

    def test_a_notice_before_the_close_is_read_though_the_send_fails(self):
        # The daemon tells a uid at its limit ``busy`` and closes, before
        # the request is written: the send fails, and the notice is read.
        d = tempfile.mkdtemp()
        path = os.path.join(d, "query.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen()
        self.addCleanup(os.rmdir, d)
        self.addCleanup(os.unlink, path)
        self.addCleanup(listener.close)
        closed = threading.Event()

        def refuse():
            c, _ = listener.accept()
            c.sendall(b'{"v":1,"ok":false,"error":"busy","message":"16 clients"}\n')
            c.close()
            closed.set()

        t = threading.Thread(target=refuse, daemon=True)
        t.start()
        self.addCleanup(t.join)
        connect = loopwarden._connect

        def connect_then_wait(*args):
            s = connect(*args)
            closed.wait(5)
            return s

        loopwarden._connect = connect_then_wait
        self.addCleanup(setattr, loopwarden, "_connect", connect)
        with self.assertRaises(loopwarden.QueryError) as e:
            loopwarden.who_cookie(1, path=path)
        self.assertEqual((e.exception.code, e.exception.message), ("busy", "16 clients"))

    def test_silent_daemon(self):
        d = tempfile.mkdtemp()
        path = os.path.join(d, "query.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen()  # and never accepts: the request is never answered
        self.addCleanup(os.rmdir, d)
        self.addCleanup(os.unlink, path)
        self.addCleanup(listener.close)
        with self.assertRaises(loopwarden.QueryError) as e:
            loopwarden.conns(path=path, timeout=0.2)
        self.assertEqual(e.exception.code, "io")
        self.assertIn("0.2 s", e.exception.message)

    def test_a_full_backlog_is_waited_for_until_the_timeout(self):
        # A daemon that never accepts, its backlog (of 1) full: the connect
        # is tried again until the timeout, then an `io` error says why,
        # not a `connect` error at once.
        d = tempfile.mkdtemp()
        path = os.path.join(d, "query.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(0)
        self.addCleanup(os.rmdir, d)
        self.addCleanup(os.unlink, path)
        self.addCleanup(listener.close)
        queued = []
        for _ in range(4):
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            try:
                c.connect(path)
                queued.append(c)
            except BlockingIOError:
                c.close()
                break
        else:
            self.fail("the backlog never filled")
        for c in queued:
            self.addCleanup(c.close)
        began = time.monotonic()
        with self.assertRaises(loopwarden.QueryError) as e:
            loopwarden.conns(path=path, timeout=0.3)
        self.assertEqual(e.exception.code, "io", e.exception.message)
        self.assertIn("backlog", e.exception.message)
        self.assertGreaterEqual(time.monotonic() - began, 0.3)

    def test_an_answer_that_trickles_in_is_given_up_on_at_the_timeout(self):
        # Each byte comes 30 ms after the one before, ten times sooner
        # than the timeout; the whole answer would take over a second.
        path = self.serve(['{"v":1,"ok":true,"conns":[{"pid":7}]}'], drip=0.03)
        with self.assertRaises(loopwarden.QueryError) as e:
            loopwarden.conns(path=path, timeout=0.3)
        self.assertEqual(e.exception.code, "io", e.exception.message)
        self.assertIn("0.3 s", e.exception.message)

    def test_a_timeout_is_positive_or_none(self):
        for bad in (0, -1.0):
            with self.assertRaisesRegex(ValueError, "positive"):
                loopwarden.conns(path="/nonexistent/query.sock", timeout=bad)
        # None waits as long as it takes (here: no daemon, at once).
        with self.assertRaisesRegex(loopwarden.QueryError, r"\[provenance\] query"):
            loopwarden.conns(path="/nonexistent/query.sock", timeout=None)
        path = self.serve(['{"v":1,"ok":true,"conns":[{"pid":7}]}'])
        self.assertEqual(loopwarden.conns(path=path, timeout=None), [{"pid": 7}])

    def test_an_answer_cut_short_by_a_close_is_closed(self):
        # Part of an answer, then the close: the daemon closed the
        # connection, not a malformed answer.
        path = self.serve(['cut:{"v":1,"ok":true,"origin":{"pid":7,'])
        with self.assertRaises(loopwarden.QueryError) as e:
            loopwarden.who_cookie(1, path=path)
        self.assertEqual(e.exception.code, "closed")

    def test_an_endless_answer_is_a_protocol_error(self):
        # A line past the limit (lowered here) is refused, not read to its end.
        path = self.serve(['{"v":1,"ok":true,"conns":[' + '{"pid":7},' * 100 + "]}"])
        limit = loopwarden._MAX_ANSWER
        loopwarden._MAX_ANSWER = 64
        self.addCleanup(setattr, loopwarden, "_MAX_ANSWER", limit)
        with self.assertRaisesRegex(loopwarden.QueryError, "longer than 64 bytes"):
            loopwarden.conns(path=path)

    def test_no_daemon(self):
        with self.assertRaisesRegex(loopwarden.QueryError, r"\[provenance\] query"):
            loopwarden.conns(path="/nonexistent/query.sock")


if __name__ == "__main__":
    unittest.main()
