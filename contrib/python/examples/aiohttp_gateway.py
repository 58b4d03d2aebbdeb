#!/usr/bin/env python3
"""An OpenAI-compatible API gateway on aiohttp that refuses relayed requests.

Agent gateways and local model servers often listen on 127.0.0.1 and trust
whoever reaches them there: "only local processes can connect". A tunnel
or relay (socat, ssh -R, a forwarder somebody left running) breaks that
promise: the connection to 127.0.0.1 is local, the person behind it is not.

``loopwarden_middleware`` asks loopwarden, per request, who made the
connection (one getsockopt on the request's socket) and answers 403 when
it was not a direct local client: a ``loopwarden_relayed`` error when relay
evidence names the remote party, ``loopwarden_flagged`` when a rule matched
the caller (a catalogued relay, or a rule of the operator's). The answer
goes to whoever is behind the relay, so it names nothing of this host (no
process, pid or address, nor how loopwarden is set up); the gateway's log
(stderr, or ``--log FILE``) names the relay, its pid and the remote party
for the operator, and what to check when it refuses an unknown connection
or cannot ask loopwarden. The API
itself is a stand-in: ``GET /v1/models`` and ``POST
/v1/chat/completions``, which echoes the last user message.

Run it (loopwarden protecting the port, e.g. ``[protect] ports = [8080]``)::

    PYTHONPATH=contrib/python python3 contrib/python/examples/aiohttp_gateway.py \\
        --host 127.0.0.1 --port 8080

The gateway was deployed relying on loopwarden, so it fails closed.
Connections loopwarden knows nothing of (status unknown: a port it does not
protect, a connection older than the daemon, one of more live connections
than ``[provenance] connections`` holds, which a relayed client can cause
by opening that many) get 403 by default; ``--unknown pass`` serves them.
When loopwarden is not answering at all (daemon never started, detached,
``[provenance] getsockopt = false``) the gateway answers 503 by default;
``--not-answering pass`` serves anyway.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

from aiohttp import web

try:
    import loopwarden
except ImportError:  # run from a checkout: the module is one directory up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import loopwarden

MODEL = "echo-1"

log = logging.getLogger("aiohttp_gateway")

# Application keys of the two settings (plain strings: aiohttp 3.8 has no AppKey).
UNKNOWN = "loopwarden_unknown"
NOT_ANSWERING = "loopwarden_not_answering"


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


def _refusal(o: "loopwarden.Origin") -> tuple:
    """The error type and message for a non-direct origin, relayed (relay
    evidence names the remote party) or flagged (a rule matched its caller,
    a catalogued relay or a rule of the operator's), and what the log says
    of it. The message goes to the client, who may be the remote party
    itself: it names nothing of this host."""
    host, port = o.server
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # The caller chose its name (a file name, or comm by prctl): quoted,
    # as the path is, so a newline in it cannot forge a line of the log.
    who = f"{o.exe_name or o.comm!r} (pid {o.pid})"
    rule = (
        "the relay verdict"
        if o.rule == "relay"
        else "no rule"
        if o.rule is None
        else f"rule #{o.rule}"
    )
    if o.via is not None:
        return (
            "loopwarden_relayed",
            "refused: this request reached the gateway through a relay on its host, "
            "on a remote party's behalf; only local clients that connect by "
            "themselves are served",
            f"refused a request relayed to {server} by {who} for {o.via} "
            f"({o.via.how}); loopwarden saw a network-facing process connect "
            f"on a remote party's behalf (verdict {o.verdict}, {rule})",
        )
    return (
        "loopwarden_flagged",
        "refused: loopwarden flagged the connection carrying this request; only a "
        "local client that connects by itself, and that no rule flags, is served",
        f"refused a request on the connection to {server} made by {who}: "
        f"loopwarden flagged that connect (verdict {o.verdict or 'not known'}, {rule})",
    )


@web.middleware
async def loopwarden_middleware(request: web.Request, handler):
    """403 unless loopwarden says a local process connected directly."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return _error(503, "loopwarden_unavailable", "the request's socket is gone")
    try:
        origin = loopwarden.origin(sock)
    except loopwarden.NotAnswering:
        if request.app.get(NOT_ANSWERING, "refuse") == "pass":
            return await handler(request)
        # What to do about it is the operator's to read, not the client's.
        log.error(
            "%s %r: loopwarden is not answering on this host, so the origin of "
            "the request cannot be checked: start loopwarden (with [provenance] "
            "getsockopt = true, and getsockopt_cgroups, if set, naming this "
            "gateway's cgroup) or run the gateway with --not-answering pass",
            request.method,
            request.path,
        )
        return _error(
            503, "loopwarden_not_answering", "unavailable: the request's origin cannot be checked"
        )
    except (OSError, loopwarden.BadRecord) as e:
        log.error("%s %r: reading the request's origin failed: %s", request.method, request.path, e)
        return _error(503, "loopwarden_error", "unavailable: the request's origin cannot be checked")
    if origin is None:
        if request.app.get(UNKNOWN, "refuse") == "pass":
            return await handler(request)
        log.warning(
            "%s %r: refused: loopwarden knows nothing of this connection (is this "
            "port in its [protect] ports? were more connections open than its "
            "[provenance] connections?); run the gateway with --unknown pass to "
            "serve such connections",
            request.method,
            request.path,
        )
        return _error(
            403,
            "loopwarden_unknown",
            "refused: the origin of this connection is not known; only local clients "
            "whose connection is known to connect by themselves are served",
        )
    if not origin.is_direct:
        kind, message, detail = _refusal(origin)
        # The path is the client's (and percent-decoded): quoted, so it
        # cannot forge a line of the log.
        log.warning("%s %r: %s", request.method, request.path, detail)
        return _error(403, kind, message)
    return await handler(request)


async def models(_request: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "example"}]}
    )


async def chat_completions(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        messages = body["messages"]
        text = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return _error(
            400, "invalid_request_error", "expected JSON with a `messages` list"
        )
    now = int(time.time())
    return web.json_response(
        {
            "id": f"chatcmpl-{now}",
            "object": "chat.completion",
            "created": now,
            "model": body.get("model", MODEL),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"echo: {text}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
    )


def app(unknown: str = "refuse", not_answering: str = "refuse") -> web.Application:
    """The gateway, with loopwarden_middleware in front of every route."""
    application = web.Application(middlewares=[loopwarden_middleware])
    application[UNKNOWN] = unknown
    application[NOT_ANSWERING] = not_answering
    application.add_routes(
        [web.get("/v1/models", models), web.post("/v1/chat/completions", chat_completions)]
    )
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument(
        "--unknown",
        choices=["pass", "refuse"],
        default="refuse",
        help="connections loopwarden knows nothing of (default: refuse, with 403)",
    )
    parser.add_argument(
        "--not-answering",
        choices=["pass", "refuse"],
        default="refuse",
        help="when loopwarden is not answering at all (default: refuse, with 503)",
    )
    parser.add_argument(
        "--log", metavar="FILE", help="append the log here instead of writing it to stderr"
    )
    args = parser.parse_args()
    logging.basicConfig(
        filename=args.log,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    web.run_app(app(args.unknown, args.not_answering), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
