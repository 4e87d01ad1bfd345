"""A strict IMDSv2 emulator: a real HTTP/1.1 server on loopback.

It enforces the token rules of the real service, serves a metadata tree, records
every request so tests can assert exactly what a client did, and injects faults on
demand: latency, a late start, 429/503 bursts, throttling at a rate (429 with Retry-After),
revoked tokens, a dropped PUT response (the hop-limit symptom), slow or truncated bodies, an
outage.

What changes while an instance runs changes here too, at any time: values edited
(tags), credentials rotated with a new Expiration (by hand, or by themselves before
they expire, as EC2 does), instance event notices appearing, the Auto Scaling lifecycle state
moving, instance tags turned off. Any change can also be made at a later time (`at`, `after`):
it happens before the first request at or after that time is answered, as
amazon-ec2-metadata-mock's trigger times and delays do. `cc_imds.testing.control` offers the
same over a loopback HTTP endpoint of its own, and `cc_imds.testing.scenario` reads timed
changes from a file.

It is also what `cc-imds emulate` and `cc-imds demo` run.
"""

from __future__ import annotations

import datetime
import secrets
import socket
import string
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..imds.autoscaling import LIFECYCLE_PATH, LIFECYCLE_STATES
from ..imds.tree import MetadataTree, as_leaf
from ..jsontext import parse

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MODES = ("required", "optional", "disabled", "v1-only")
CREDENTIAL_DIRS = ("meta-data/iam/security-credentials/", "meta-data/identity-credentials/ec2/security-credentials/")
SPOT_ACTION = "meta-data/spot/instance-action"
SPOT_TERMINATION_TIME = "meta-data/spot/termination-time"
REBALANCE = "meta-data/events/recommendations/rebalance"
MAINTENANCE = "meta-data/events/maintenance/scheduled"
LIFECYCLE = LIFECYCLE_PATH

_NOT_FOUND_BODY = b"""<?xml version="1.0" encoding="iso-8859-1"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
 <head>
  <title>404 - Not Found</title>
 </head>
 <body>
  <h1>404 - Not Found</h1>
 </body>
</html>
"""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    status: int  # 0 when no response was sent (dropped or reset)
    token: str  # "valid", "invalid", "expired" or "none"
    ttl: Optional[str] = None  # the token TTL header as sent, None when absent
    user_agent: Optional[str] = None


@dataclass
class _StatusFault:
    """`left` more requests matching `method` and `path` get `status` (see Emulator.fail_next)."""

    status: int
    retry_after: Optional[str]
    method: Optional[str]
    path: Optional[str]
    left: int

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        if self.path is None:
            return True
        return path.startswith(self.path) if self.path.endswith("/") else path == self.path


@dataclass(frozen=True)
class TimedChange:
    """A change to make once the emulator's clock reaches `when` (wall-clock epoch seconds)."""

    when: float
    label: str  # what it does, as GET /schedule shows it
    change: Callable[[], Any]


class Emulator:
    """The server. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        tree: MetadataTree,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: str = "required",
    ) -> None:
        if mode not in MODES:
            raise ValueError("mode must be one of " + ", ".join(MODES))
        self.tree = tree
        self.mode = mode
        # Faults, settable at any time by tests.
        self.latency = 0.0  # seconds before every response
        self.drop_put = False  # hold PUT responses: what a too-low hop limit looks like
        self.slow_body = 0.0  # seconds between body bytes (slowloris)
        self.reset_mid_body = False  # send half the body, then a TCP reset
        self._truncate_next = 0  # ... for only the next N bodies
        self._revoke_after: Optional[int] = None  # revoke every token after N more GETs
        self._outage_until: Optional[float] = None  # drop every connection until then (monotonic)
        self._credential_lifetime: Optional[float] = None  # rotate credentials by themselves
        self._issued_credentials: List[str] = []
        self._issued: List[str] = []
        self._faults: List[_StatusFault] = []
        self._throttle: Optional[Tuple[int, Optional[str]]] = None  # (requests per second, Retry-After)
        self._answered: Deque[float] = deque()  # when the last second's answered requests came (clock)
        # Wall clock of timed changes (`at`, `after`): the time AEMM's trigger times are written in.
        self.clock: Callable[[], float] = time.time
        self._timed: List[TimedChange] = []
        self._applying = threading.Lock()  # one thread makes the changes that fell due, in order
        self._change_time = threading.local()  # the time a timed change was due: its notices carry it
        self.failed_changes: List[Tuple[str, str]] = []  # (label, why) of timed changes that could not be made
        self._tokens: Dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: List[RecordedRequest] = []
        self._thread: Optional[threading.Thread] = None
        self._server = _Server((host, port), _Handler, bind_and_activate=False, emulator=self)
        self._server.server_bind()

    # -- lifecycle ---------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), self._server.server_address[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self, delay: float = 0.0) -> Emulator:
        """Serve in a background thread. Until `delay` has passed, the port is bound
        but not listening, so connections are refused as on a booting instance."""

        if not delay:
            self._server.server_activate()  # listening before start() returns

        def run() -> None:
            if delay:
                if self._stopping.wait(delay):
                    return
                self._server.server_activate()
            self._server.serve_forever(poll_interval=0.05)

        self._thread = threading.Thread(target=run, name="imds-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            if self._thread.is_alive():
                self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------
    def fail_next(
        self,
        status: int,
        count: int = 1,
        retry_after: Optional[str] = None,
        *,
        method: Optional[str] = None,
        path: Optional[str] = None,
    ) -> None:
        """Answer the next `count` requests that match with `status` (429, 503...), an empty
        body, and `Retry-After: retry_after` when given.

        A request matches when its method is `method` ("GET", or "PUT" for the token) and its
        path is `path` ("/latest/api/token", "/latest/meta-data/instance-id"), or starts with
        it when `path` ends with "/"; None matches any. Requests that do not match are served
        as usual and consume nothing. Faults queue in the order given: a request takes the
        oldest fault that matches it. Without `method`, the first request of any IMDSv2
        client, its token PUT, takes the first fault."""
        if not 100 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP status (100 to 599)")
        if count < 1:
            raise ValueError(f"count {count} must be at least 1")
        if method is not None and method not in ("GET", "PUT", "POST", "DELETE"):
            raise ValueError(f"method {method!r} must be GET, PUT, POST or DELETE")
        if path is not None and not path.startswith("/"):
            raise ValueError(f"path {path!r} must start with /, as a request's does (/latest/...)")
        with self._lock:
            self._faults.append(_StatusFault(status, retry_after, method, path, count))

    def clear_faults(self) -> None:
        """Withdraw every injected answer not yet given."""
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        """How many injected answers are still to be given."""
        with self._lock:
            return sum(f.left for f in self._faults)

    def throttle(self, per_second: Optional[int], retry_after: Optional[str] = "1") -> None:
        """Answer at most `per_second` requests in any second (token PUTs included); the others
        get 429 with `Retry-After: retry_after` (none when None), as a throttled IMDS does.
        None stops throttling. For a number of 429s instead of a rate, see fail_next."""
        if per_second is not None and per_second < 1:
            raise ValueError(f"a rate of {per_second} requests per second must be at least 1")
        with self._lock:
            self._throttle = None if per_second is None else (per_second, retry_after)
            self._answered.clear()

    def drop_token_puts(self, drop: bool = True) -> None:
        """Leave token PUTs unanswered (connection held open, then closed), as when the PUT's
        response dies on the way back through one network hop too many (hop limit 1 in a
        container): GETs are still answered."""
        self.drop_put = drop

    def set_tags_enabled(self, enabled: bool) -> None:
        """Instance tags in metadata on or off, as `aws ec2 modify-instance-metadata-options
        --instance-metadata-tags` turns them: off, every path under tags/instance/ is a 404."""
        self.tree.tags_enabled = enabled

    def set_lifecycle_state(self, state: Optional[str]) -> Optional[str]:
        """Serve `state` at meta-data/autoscaling/target-lifecycle-state (InService, Terminated,
        Detached, Standby, Warmed:Stopped, Warmed:Running, Warmed:Hibernated, Warmed:Terminated);
        None makes it a 404, as on an instance in no Auto Scaling group."""
        if state is None:
            self.tree.delete(LIFECYCLE)
            return None
        if state not in LIFECYCLE_STATES:
            raise ValueError(f"{state!r} is not a lifecycle state: one of {', '.join(LIFECYCLE_STATES)}")
        self.set_value(LIFECYCLE, state)
        return state

    # -- timed changes -----------------------------------------------------------------------
    def at(self, when: float, label: str, change: Callable[[], Any]) -> None:
        """Make `change` once the clock reaches `when` (epoch seconds): before the first request
        answered at or after it (or at once, when it has passed). Changes due together are made
        in the order they were given."""
        with self._lock:
            self._timed.append(TimedChange(when, label, change))
            self._timed.sort(key=lambda t: t.when)  # stable: equal times keep their order
        self.apply_due()

    def after(self, seconds: float, label: str, change: Callable[[], Any]) -> None:
        """`at`, `seconds` from now."""
        self.at(self.clock() + seconds, label, change)

    def scheduled(self) -> List[Tuple[float, str]]:
        """The timed changes still to make: (when, label), earliest first."""
        with self._lock:
            return [(t.when, t.label) for t in self._timed]

    def cancel_scheduled(self) -> int:
        """Drop every timed change not yet made; returns how many."""
        with self._lock:
            count = len(self._timed)
            self._timed.clear()
        return count

    def apply_due(self) -> None:
        """Make the timed changes that fell due. Called before every request is answered."""
        with self._applying:
            while True:
                now = self.clock()
                with self._lock:
                    if not self._timed or self._timed[0].when > now:
                        return
                    due = self._timed.pop(0)
                self._change_time.when = due.when
                try:
                    due.change()
                except Exception as exc:  # noqa: BLE001 - the request that brought it due is still answered
                    with self._lock:
                        self.failed_changes.append((due.label, f"{type(exc).__name__}: {exc}"))
                finally:
                    self._change_time.when = None

    def _now(self) -> float:
        """When a change happens: the time it was due, for a timed one (a notice says when it
        appeared, however late the request that brought it), else the clock."""
        when = getattr(self._change_time, "when", None)
        return when if when is not None else self.clock()

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def revoke_after(self, gets: int) -> None:
        """Revoke every token once `gets` more GET requests have been answered: mid-run."""
        with self._lock:
            self._revoke_after = gets

    def truncate_next(self, count: int) -> None:
        """Reset the connection halfway through the next `count` response bodies."""
        with self._lock:
            self._truncate_next = count

    def outage(self, seconds: Optional[float] = None) -> None:
        """IMDS down: every request is read and its connection closed without an answer, for
        `seconds`, or until `restore()`."""
        with self._lock:
            self._outage_until = time.monotonic() + (seconds if seconds is not None else float("inf"))

    def restore(self) -> None:
        with self._lock:
            self._outage_until = None

    # -- run-time changes ------------------------------------------------------
    def set_value(self, path: str, value: Any) -> None:
        """Serve `value` at `path` from now on: text, bytes, or a JSON document."""
        self.tree.set(path, value if isinstance(value, bytes) else as_leaf(value, path))

    def delete_value(self, path: str) -> int:
        """Make `path` (a leaf, or a whole directory) a 404 from now on."""
        return self.tree.delete(path)

    def rotate_credentials(self, expires_in: float = 21600.0) -> List[str]:
        """New keys for every role's credentials, expiring `expires_in` seconds from now, as
        EC2 rotates them. Returns the paths rotated."""
        now = self._now()
        rotated = []
        for path, body in sorted(self.tree.leaves().items()):
            if not path.startswith(CREDENTIAL_DIRS):
                continue
            try:
                document = parse(body)
            except ValueError:  # not a document it can read (or one refused unread): left as it is
                continue
            if not isinstance(document, dict) or "Expiration" not in document:
                continue
            secret = "".join(secrets.choice(string.ascii_letters + string.digits + "+/") for _ in range(40))
            token = secrets.token_urlsafe(96)
            document.update(
                AccessKeyId="ASIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
                SecretAccessKey=secret,
                Token=token,
                LastUpdated=iso(now),
                Expiration=iso(now + expires_in),
            )
            with self._lock:
                self._issued_credentials.extend([secret, token])
            self.tree.set(path, as_leaf(document, path))
            rotated.append(path)
        return rotated

    def rotate_credentials_every(self, lifetime: Optional[float]) -> None:
        """Rotate credentials by themselves, as EC2 does: each set lives `lifetime` seconds,
        and a new one is served once the old has less than a quarter of that (at most five
        minutes) left. None stops it."""
        with self._lock:
            self._credential_lifetime = lifetime
        if lifetime:
            self._rotate_if_due()

    def _rotate_if_due(self) -> None:
        with self._lock:
            lifetime = self._credential_lifetime
        if not lifetime:
            return
        lead = min(300.0, lifetime / 4)
        for path, body in self.tree.leaves().items():
            if path.startswith(CREDENTIAL_DIRS):
                expiration = _expiration(body)
                if expiration is not None and expiration - self.clock() < lead:
                    self.rotate_credentials(lifetime)
                    return

    def issued_credentials(self) -> List[str]:
        """Every secret key and session token rotated in: tests grep output for them."""
        with self._lock:
            return list(self._issued_credentials)

    def spot_interruption(self, action: str = "terminate", in_seconds: float = 120.0) -> Dict[str, str]:
        """Announce a spot interruption: `action` (terminate, stop or hibernate) in `in_seconds`."""
        notice = {"action": action, "time": iso(self._now() + in_seconds)}
        self.set_value(SPOT_ACTION, notice)
        self.set_value(SPOT_TERMINATION_TIME, notice["time"])
        return notice

    def rebalance_recommendation(self) -> Dict[str, str]:
        notice = {"noticeTime": iso(self._now())}
        self.set_value(REBALANCE, notice)
        return notice

    def schedule_maintenance(
        self, code: str = "system-reboot", in_seconds: float = 7 * 86400.0, duration: float = 7200.0
    ) -> Dict[str, str]:
        """Add a scheduled event (as `aws ec2 describe-instance-status` would list it), with the
        fields IMDS gives one: a NotBeforeDeadline two days after NotAfter, as AEMM's defaults."""
        start = self._now() + in_seconds
        event = {
            "NotBefore": _maintenance_time(start),
            "Code": code,
            "Description": f"The instance is scheduled for {code}",
            "EventId": "instance-event-" + secrets.token_hex(9)[:17],
            "NotAfter": _maintenance_time(start + duration),
            "NotBeforeDeadline": _maintenance_time(start + duration + 2 * 86400.0),
            "State": "active",
        }
        body = self.tree.lookup(MAINTENANCE)
        try:
            events = parse(body) if body else []
        except ValueError as exc:
            raise ValueError(f"{MAINTENANCE} holds no list of events to add to ({exc}); clear the events first") \
                from None
        if not isinstance(events, list):
            raise ValueError(f"{MAINTENANCE} holds no list of events to add to; clear the events first")
        events.append(event)
        self.set_value(MAINTENANCE, events)
        return event

    def clear_events(self) -> None:
        for path in (SPOT_ACTION, SPOT_TERMINATION_TIME, REBALANCE, MAINTENANCE):
            self.tree.delete(path)

    # -- what happened -----------------------------------------------------
    @property
    def requests(self) -> List[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str, *, path: Optional[str] = None) -> int:
        return sum(1 for r in self.requests if r.method == method and (path is None or r.path == path))

    def issued_tokens(self) -> List[str]:
        """Every token issued so far, revoked ones included: tests grep output for them."""
        with self._lock:
            return list(self._issued)

    def clear_log(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- used by the handler -----------------------------------------------
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            if request.method == "GET" and self._revoke_after is not None:
                self._revoke_after -= 1
                if self._revoke_after <= 0:
                    self._tokens.clear()
                    self._revoke_after = None

    def _take_truncation(self) -> bool:
        with self._lock:
            if self.reset_mid_body:
                return True
            if self._truncate_next > 0:
                self._truncate_next -= 1
                return True
            return False

    def _throttled(self) -> Optional[str]:
        """None when this request may be answered; else its Retry-After ("" for none)."""
        with self._lock:
            if self._throttle is None:
                return None
            rate, retry_after = self._throttle
            now = self.clock()
            while self._answered and self._answered[0] <= now - 1.0:
                self._answered.popleft()
            if len(self._answered) >= rate:
                return retry_after or ""
            self._answered.append(now)
            return None

    def _down(self) -> bool:
        with self._lock:
            return self._outage_until is not None and time.monotonic() < self._outage_until

    def _next_injected(self, method: str, path: str) -> Optional[Tuple[int, Optional[str]]]:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.left -= 1
                    if not fault.left:
                        self._faults.remove(fault)
                    return fault.status, fault.retry_after
            return None

    def _issue_token(self, ttl: int) -> str:
        token = secrets.token_urlsafe(42)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
            self._issued.append(token)
        return token

    def _token_state(self, token: Optional[str]) -> str:
        if token is None:
            return "none"
        with self._lock:
            expiry = self._tokens.get(token)
        if expiry is None:
            return "invalid"
        return "valid" if time.monotonic() < expiry else "expired"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a queue of 5: a connection beyond it has its SYN dropped and
    # the client retries a second later, so a `get` of several values (a connection per
    # thread) stalled for 1 s every few dozen runs.
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], handler: type, *, bind_and_activate: bool, emulator: Emulator):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        super().__init__(address, handler, bind_and_activate=bind_and_activate)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this, keep-alive clients stall ~40 ms per request on delayed ACKs.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # requests are recorded structurally instead

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator

    def do_PUT(self) -> None:  # noqa: N802 - stdlib naming
        self._handle("PUT")

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    # ----------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        emu = self.emulator
        length = self.headers.get("Content-Length") or "0"
        if not (length.isascii() and length.isdigit() and int(length[:9] or 0) <= 1024 * 1024 and len(length) <= 9):
            self.send_error(400, "bad Content-Length")  # IMDS requests carry no body: never a traceback, nor 1 GB
            return
        if int(length):
            self.rfile.read(int(length))
        emu.apply_due()
        token = self.headers.get(TOKEN_HEADER)
        token_state = emu._token_state(token)
        if emu._down():
            emu._record(RecordedRequest(method, self.path, 0, token_state))
            self.close_connection = True  # no answer at all, as when IMDS is unreachable
            return
        emu._rotate_if_due()
        if emu.latency:
            time.sleep(emu.latency)

        throttled = emu._throttled()
        if throttled is not None:
            self._send(method, 429, b"", token_state, {"Retry-After": throttled} if throttled else {})
            return
        injected = emu._next_injected(method, self.path)
        if injected is not None:
            status, retry_after = injected
            headers = {"Retry-After": retry_after} if retry_after else {}
            self._send(method, status, b"", token_state, headers)
            return

        if emu.mode == "disabled":
            self._send(method, 403, b"", token_state)
        elif self.path == TOKEN_PATH:
            self._token_request(method, token_state)
        elif method != "GET":
            self._send(method, 405, b"", token_state)
        else:
            self._get(token_state)

    def _token_request(self, method: str, token_state: str) -> None:
        emu = self.emulator
        if method != "PUT" or emu.mode == "v1-only":
            self._send(method, 405 if method != "PUT" else 404, _NOT_FOUND_BODY, token_state)
            return
        if self.headers.get("X-Forwarded-For") is not None:
            self._send(method, 403, b"", token_state)
            return
        raw_ttl = self.headers.get(TTL_HEADER, "")
        if not raw_ttl.isdigit() or not 1 <= int(raw_ttl) <= 21600:
            self._send(method, 400, b"", token_state)
            return
        if emu.drop_put:
            # The response would be dropped on the way back: say nothing and hold the
            # connection until the client gives up or the emulator stops.
            emu._record(self._recorded(method, 0, token_state))
            emu._stopping.wait(60)
            self.close_connection = True
            return
        token = emu._issue_token(int(raw_ttl))
        self._send(method, 200, token.encode(), token_state, {TTL_HEADER: raw_ttl})

    def _get(self, token_state: str) -> None:
        emu = self.emulator
        if token_state in ("invalid", "expired"):
            self._send("GET", 401, b"", token_state)
            return
        if token_state == "none" and emu.mode == "required":
            self._send("GET", 401, b"", token_state)
            return
        version, _, rest = self.path.lstrip("/").partition("/")
        if version != "latest" and not _is_api_version(version):
            self._send("GET", 404, _NOT_FOUND_BODY, token_state)
            return
        body = emu.tree.lookup(rest) if rest else b"dynamic\nmeta-data\nuser-data"
        if body is None:
            self._send("GET", 404, _NOT_FOUND_BODY, token_state, content_type="text/html")
        else:
            self._send("GET", 200, body, token_state)

    def _recorded(self, method: str, status: int, token_state: str) -> RecordedRequest:
        return RecordedRequest(
            method, self.path, status, token_state, self.headers.get(TTL_HEADER), self.headers.get("User-Agent")
        )

    def _send(
        self,
        method: str,
        status: int,
        body: bytes,
        token_state: str,
        headers: Optional[Dict[str, str]] = None,
        content_type: str = "text/plain",
    ) -> None:
        emu = self.emulator
        truncate = status == 200 and method == "GET" and len(body) > 1 and emu._take_truncation()
        emu._record(self._recorded(method, 0 if truncate else status, token_state))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if truncate:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            # SO_LINGER with a zero timeout turns close() into a TCP reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if emu.slow_body and body:
            for i in range(len(body)):
                if emu._stopping.is_set():
                    break
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(emu.slow_body)
        else:
            self.wfile.write(body)


def iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _maintenance_time(epoch: float) -> str:
    """Scheduled events use another format: `21 Jan 2019 09:00:43 GMT`, `7 Dec 2026 ...` (no
    leading zero, as amazon-ec2-metadata-mock writes it)."""
    when = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
    return f"{when.day} {when:%b %Y %H:%M:%S} GMT"


def _expiration(body: bytes) -> Optional[float]:
    try:
        document = parse(body)
        when = datetime.datetime.strptime(document["Expiration"], "%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, KeyError, TypeError):
        return None
    return when.replace(tzinfo=datetime.timezone.utc).timestamp()


def _is_api_version(segment: str) -> bool:
    parts = segment.split("-")
    return len(parts) == 3 and all(p.isdigit() for p in parts)
