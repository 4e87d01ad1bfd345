"""The emulator's control endpoint: change what it serves while it runs, over HTTP.

It listens on a loopback port of its own, never on the IMDS port, and takes no IMDS
token: nothing that can talk to the emulated IMDS can reach it through IMDS. Answers are
JSON. `cc-imds emulate --control-port N` runs it; docs/after-boot.md and docs/emulator-control.md
list the calls:

    GET    /tree                                  the tree, as a flat {path: value} document
    PUT    /tree                                  serve the tree in the body instead (flat, or AEMM's format)
    PUT    /tree/PATH                             serve the request body at PATH
    DELETE /tree/PATH                             make PATH (a leaf or a directory) a 404
    POST   /credentials/rotate?expires_in=S       new credentials, expiring S seconds from now
    POST   /events/spot-interruption?action=A&in=S          *
    POST   /events/rebalance-recommendation                 *
    POST   /events/scheduled-maintenance?code=C&in=S        *
    DELETE /events                                withdraw every notice
    POST   /autoscaling/target-lifecycle-state?state=S      * serve an Auto Scaling lifecycle state
    DELETE /autoscaling/target-lifecycle-state              * a 404: in no Auto Scaling group
    POST   /tags?enabled=true|false               instance tags in metadata on or off
    POST   /faults/status?code=C&count=N&method=M&path=P&retry_after=R
                                                  answer the next N matching requests with C
    POST   /faults/throttle?rate=N&retry_after=R  answer at most N requests a second, 429 to the rest
    DELETE /faults/throttle                       stop throttling
    POST   /faults/drop-token-puts                leave token PUTs unanswered (the hop-limit symptom)
    DELETE /faults/drop-token-puts                answer them again
    DELETE /faults                                withdraw every fault: injected answers, throttle, dropped PUTs
    POST   /outage?seconds=S                      drop every IMDS connection (for S seconds)
    DELETE /outage                                answer again
    POST   /scenario                              timed changes, the body a scenario (cc_imds.testing.scenario)
    GET    /schedule                              the timed changes still to come (and any that failed)
    DELETE /schedule                              cancel them
    GET    /requests                              how many requests IMDS answered, by method

* also takes `after=S` (seconds from now) or `at=TIME` (RFC 3339): the change is made then,
  as amazon-ec2-metadata-mock's delays and trigger times make theirs.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from ..imds.tree import MetadataTree, TreeError, tree_from_document
from ..jsontext import parse
from ..untrusted import InputError, load_yaml
from . import scenario
from .emulator import Emulator, iso

MAX_BODY = 1024 * 1024


class ControlError(ValueError):
    """A control request that cannot be done (400)."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ControlServer:
    def __init__(self, emulator: Emulator, *, host: str = "127.0.0.1", port: int = 0) -> None:
        if not _loopback(host):
            raise ValueError(f"the control endpoint listens on loopback only, not {host!r}")
        self.emulator = emulator
        self._server = _Server((host, port), _Handler, self)
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), self._server.server_address[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> ControlServer:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,), name="imds-control",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the calls ---------------------------------------------------------------------------
    def handle(self, method: str, target: str, body: bytes) -> Tuple[int, Any]:
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        emu = self.emulator
        if path.startswith("/tree/") and method in ("PUT", "DELETE"):
            leaf = path[len("/tree/"):].strip("/")
            if not leaf:
                raise ControlError("give a path: /tree/meta-data/...")
            scenario.check_path(leaf, "")
            if method == "PUT":
                scenario.check_readable(leaf, body, leaf)
                emu.set_value(leaf, body)
                return 200, {"set": leaf, "bytes": len(body)}
            return 200, {"deleted": leaf, "leaves": emu.delete_value(leaf)}
        if (method, path.rstrip("/")) == ("POST", "/scenario"):
            return 200, _scenario(emu, body)
        if (method, path.rstrip("/")) == ("PUT", "/tree"):
            return 200, {"leaves": emu.tree.replace(_tree(body))}
        if body:
            raise ControlError(f"{method} {path} takes no body (options go in the query string)")
        def clear_events() -> Any:
            emu.clear_events()
            return {"cleared": True}

        def outage(on: bool) -> Any:
            if on:
                emu.outage(_seconds(query, "seconds", None))
            else:
                emu.restore()
            return {"outage": on}

        def fail_next() -> Any:
            options = {"code": _whole(query, "code", None), "count": _whole(query, "count", 1),
                       "method": query.get("method"), "path": query.get("path"), **_retry_after(query)}
            scenario.CHANGES["fail"](options, "")(emu)
            return {"pending": emu.pending_faults()}

        def clear_faults() -> Any:
            emu.clear_faults()
            emu.throttle(None)
            emu.drop_token_puts(False)
            return {"pending": 0, "throttle": None, "drop_token_puts": False}

        def throttle(on: bool) -> Any:
            options = {"rate": _whole(query, "rate", None), **_retry_after(query)} if on else None
            return scenario.CHANGES["throttle"](options, "")(emu)

        def drop_puts(on: bool) -> Any:
            emu.drop_token_puts(on)
            return {"drop_token_puts": on}

        def tags() -> Any:
            enabled = {"true": True, "false": False}.get(query.get("enabled", "").lower())
            if enabled is None:
                raise ControlError("give enabled=true or enabled=false")
            emu.set_tags_enabled(enabled)
            return {"tags": enabled}

        def timed(name: str, options: Any) -> Any:
            """A change now, or at `at`/`after` when the query gives one. A mistake in its
            options is a ScenarioError, a ValueError: answered 400 with its text."""
            change = scenario.CHANGES[name](options, name)
            when = _when(emu, query)
            if when is None:
                result = change(emu)
                return result if isinstance(result, dict) else {name: result}
            label = scenario.describe(name, options)
            emu.at(when, label, lambda: change(emu))
            return {"scheduled": label, "at": iso(when)}

        def spot_options() -> Any:
            return {"action": query.get("action", "terminate"), "in": _seconds(query, "in", 120.0)}

        def maintenance_options() -> Any:
            return {"code": query.get("code", "system-reboot"), "in": _seconds(query, "in", 7 * 86400.0)}

        def schedule() -> Any:
            return {"scheduled": [{"at": iso(when), "change": label} for when, label in emu.scheduled()],
                    **({"failed": [{"change": label, "error": why} for label, why in emu.failed_changes]}
                       if emu.failed_changes else {})}

        routes: Dict[Tuple[str, str], Callable[[], Any]] = {
            ("GET", "/tree"): lambda: _flat(emu.tree.leaves()),
            ("POST", "/credentials/rotate"): lambda: {
                "rotated": emu.rotate_credentials(_seconds(query, "expires_in", 21600.0))},
            ("POST", "/events/spot-interruption"): lambda: timed("spot-interruption", spot_options()),
            ("POST", "/events/rebalance-recommendation"): lambda: timed("rebalance-recommendation", {}),
            ("POST", "/events/scheduled-maintenance"): lambda: timed("scheduled-maintenance", maintenance_options()),
            ("DELETE", "/events"): clear_events,
            ("POST", "/autoscaling/target-lifecycle-state"): lambda: timed("lifecycle-state",
                                                                           _required(query, "state")),
            ("DELETE", "/autoscaling/target-lifecycle-state"): lambda: timed("lifecycle-state", None),
            ("POST", "/tags"): tags,
            ("POST", "/faults/status"): fail_next,
            ("POST", "/faults/throttle"): lambda: throttle(True),
            ("DELETE", "/faults/throttle"): lambda: throttle(False),
            ("POST", "/faults/drop-token-puts"): lambda: drop_puts(True),
            ("DELETE", "/faults/drop-token-puts"): lambda: drop_puts(False),
            ("DELETE", "/faults"): clear_faults,
            ("GET", "/schedule"): schedule,
            ("DELETE", "/schedule"): lambda: {"cancelled": emu.cancel_scheduled()},
            ("POST", "/outage"): lambda: outage(True),
            ("DELETE", "/outage"): lambda: outage(False),
            ("GET", "/requests"): lambda: _counts(emu),
        }
        route = routes.get((method, path.rstrip("/") or "/"))
        if route is None:
            known = sorted({p for _, p in routes} | {"/tree/PATH", "/scenario"})
            return 404, {"error": f"no such call: {method} {path}", "calls": known}
        emu.apply_due()  # what GET /tree shows includes the changes that fell due
        return 200, route()


def _seconds(query: Dict[str, str], name: str, default: Optional[float]) -> Any:
    if name not in query:
        return default
    try:
        value = float(query[name])
    except ValueError:
        raise ControlError(f"{name}={query[name]!r}: expected a number of seconds") from None
    if not 0 <= value < 10**9:
        raise ControlError(f"{name}={query[name]!r}: out of range")
    return value


def _retry_after(query: Dict[str, str]) -> Dict[str, Any]:
    """`retry_after=S` as the scenario option: {} when not given (the change's default),
    None when empty (no Retry-After), else the seconds."""
    if "retry_after" not in query:
        return {}
    return {"retry_after": _seconds(query, "retry_after", None) if query["retry_after"] else None}


def _required(query: Dict[str, str], name: str) -> str:
    if name not in query:
        raise ControlError(f"give {name}=...")
    return query[name]


def _when(emulator: Emulator, query: Dict[str, str]) -> Optional[float]:
    """`after=S` (seconds from now) or `at=TIME` (RFC 3339), or None: now."""
    if "after" in query and "at" in query:
        raise ControlError("give after= or at=, not both")
    if "at" in query:
        when = scenario.parse_time(query["at"])
        if when is None:
            raise ControlError(f"at={query['at']!r}: expected a time in RFC 3339, such as 2026-12-07T08:00:00Z")
        return when
    after = _seconds(query, "after", None)
    return None if after is None else emulator.clock() + after


def _tree(body: bytes) -> MetadataTree:
    """A whole tree as the body (flat, or AEMM's format), as `--tree` reads one: AEMM's config
    file reloaded, here by whoever changed it."""
    try:
        return tree_from_document(parse(body, MAX_BODY))
    except (ValueError, TreeError) as exc:  # not JSON, refused unread (JsonRefused), or not a tree
        raise ControlError(f"the body must be a metadata tree (a JSON object): {exc}") from None


def _scenario(emulator: Emulator, body: bytes) -> Any:
    """A scenario document (YAML or JSON) as the body: its `after` times count from now."""
    try:
        steps = scenario.steps_from(load_yaml("scenario", body.decode("utf-8")))
    except UnicodeDecodeError:
        raise ControlError("the scenario must be UTF-8 text") from None
    except InputError as exc:  # a ScenarioError is a ValueError: answered 400 with its text as it is
        raise ControlError(str(exc)) from None
    start = emulator.clock()
    scenario.schedule(emulator, steps, start)
    return {"scheduled": [{"at": iso(step.when(start)), "change": step.label} for step in steps]}


def _whole(query: Dict[str, str], name: str, default: Optional[int]) -> int:
    if name not in query:
        if default is None:
            raise ControlError(f"give {name}=...")
        return default
    text = query[name]
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ControlError(f"{name}={text!r}: expected a whole number")
    return int(text)


def _flat(leaves: Dict[str, bytes]) -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for path, body in sorted(leaves.items()):
        try:
            flat[path] = body.decode("utf-8")
        except UnicodeDecodeError:
            flat[path] = {"$base64": base64.b64encode(body).decode("ascii")}
    return flat


def _counts(emulator: Emulator) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for request in emulator.requests:
        counts[request.method] = counts.get(request.method, 0) + 1
    return counts


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], handler: type, control: ControlServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.control = control
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request: a stalled one frees its thread
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def _answer(self, method: str) -> None:
        length = self.headers.get("Content-Length") or "0"
        if not (length.isascii() and length.isdigit()) or len(length) > 9 or int(length) > MAX_BODY:
            status, document = 413, {"error": f"a body of at most {MAX_BODY} bytes"}
        else:
            body = self.rfile.read(int(length))
            try:
                status, document = self.server.control.handle(method, self.path, body)
            except (ControlError, ValueError) as exc:
                status, document = 400, {"error": str(exc)}
        payload = (json.dumps(document, indent=2) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._answer("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._answer("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._answer("DELETE")
