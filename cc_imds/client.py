"""The IMDSv2 HTTP client: endpoints, one shared token, retries, one deadline.

Standard library only. `http.client` is used directly, so environment proxies
(`HTTP_PROXY`, `http_proxy`) are never consulted and redirects are never followed:
a 3xx is reported as an error. The token is sent only to the chosen endpoint and is
never logged.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from urllib.parse import quote, urlsplit

from .errors import CcImdsError, ImdsError, ImdsNotFound, ImdsUnreachable
from .logs import get_logger

# `cc-imds get` runs this module cold in every script that calls it, so it imports only
# what a single fetch needs (not logging, dataclasses, typing or a thread pool; those are
# imported where used). mypy treats a TYPE_CHECKING of our own like typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

    from .deadline import Deadline

    Outcome = Union[bytes, ImdsError]

LOG = get_logger(__name__)

IPV4_URL = "http://169.254.169.254"
IPV6_URL = "http://[fd00:ec2::254]"
TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
ENV_ENDPOINT = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
ENV_ENDPOINT_MODE = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"
# Characters IMDS uses literally in paths (tag keys may hold `:@+=,.`); anything else is escaped.
_SAFE_PATH_CHARS = "/:@+=,.-_~"

_HOP_LIMIT_MESSAGE = (
    "the token request (PUT) timed out while plain GET requests are answered: the PUT "
    "response hop limit (HttpPutResponseHopLimit) is likely too low for this host. "
    "Containers behind a bridge need 2 or more: "
    "aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2"
)


class ClientSettings:
    """Connection settings. Defaults suit boot: IMDS is normally up by the time
    cloud-init's config stage runs, so failures are rare and a bounded wait is cheap.
    Immutable, like a frozen dataclass (which would import `dataclasses` and `inspect`)."""

    # The defaults, readable on the class as on a dataclass (ClientSettings.deadline).
    endpoint: str = "auto"
    imdsv1: str = "never"  # never | fallback
    token_ttl: int = 21600  # seconds; IMDS accepts 1..21600
    timeout: float = 2.0  # one attempt: connect, send, headers and body
    deadline: float = 60.0  # the whole run, retries included
    concurrency: int = 8  # parallel GETs, one keep-alive connection each
    max_body: int = 4 * 1024 * 1024  # user-data is at most 16 KiB; nothing legitimate is near this

    def __init__(  # each default is the class attribute above
        self,
        endpoint: str = endpoint,
        imdsv1: str = imdsv1,
        token_ttl: int = token_ttl,
        timeout: float = timeout,
        deadline: float = deadline,
        concurrency: int = concurrency,
        max_body: int = max_body,
    ) -> None:
        init = object.__setattr__  # immutable to everyone else
        init(self, "endpoint", endpoint)
        init(self, "imdsv1", imdsv1)
        init(self, "token_ttl", token_ttl)
        init(self, "timeout", timeout)
        init(self, "deadline", deadline)
        init(self, "concurrency", concurrency)
        init(self, "max_body", max_body)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ClientSettings is immutable; cannot set {name}")

    _FIELDS = ("endpoint", "imdsv1", "token_ttl", "timeout", "deadline", "concurrency", "max_body")

    def _fields(self) -> Tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClientSettings) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "ClientSettings(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS) + ")"


class EndpointError(CcImdsError):
    """The endpoint setting cannot be understood."""


def choose_endpoint(
    cli: Optional[str], declared: Optional[str], environ: Mapping[str, str]
) -> Tuple[str, str]:
    """Pick the endpoint and say where it came from.

    Precedence, highest first: the CLI's --endpoint, AWS_EC2_METADATA_SERVICE_ENDPOINT,
    AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE (IPv4 | IPv6), the declaration's `endpoint`,
    then `auto`. The environment outranks the declaration as it does for AWS SDKs.
    """
    if cli:
        return cli, "--endpoint"
    if environ.get(ENV_ENDPOINT):
        return environ[ENV_ENDPOINT], ENV_ENDPOINT
    mode = environ.get(ENV_ENDPOINT_MODE, "").strip().lower()
    if mode:
        if mode not in ("ipv4", "ipv6"):
            raise EndpointError(f"{ENV_ENDPOINT_MODE}={environ[ENV_ENDPOINT_MODE]!r}: expected IPv4 or IPv6")
        return mode, ENV_ENDPOINT_MODE
    if declared:
        return declared, "declaration"
    return "auto", "default"


def candidate_urls(endpoint: str) -> List[str]:
    """The base URLs an endpoint setting stands for; `auto` races both."""
    named = {"ipv4": [IPV4_URL], "ipv6": [IPV6_URL], "auto": [IPV4_URL, IPV6_URL]}
    if endpoint in named:
        return named[endpoint]
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise EndpointError(f"endpoint {endpoint!r}: expected auto, ipv4, ipv6 or http://host[:port]")
    try:
        _ = parts.port  # raises on a port out of range
    except ValueError:
        raise EndpointError(f"endpoint {endpoint!r}: invalid port") from None
    return [f"http://{parts.netloc}"]


class _Transient(Exception):
    """A failure worth retrying: refused, reset, timed out."""

    def __init__(self, kind: str, message: str) -> None:
        # "connect", "timeout" (no response headers in time), "slow" (headers came,
        # the body did not) or "reset". Only "timeout" on a PUT can mean the hop limit.
        self.kind = kind
        super().__init__(message)


class _Fatal(Exception):
    """A failure not worth retrying (an oversized body)."""


class _Http:
    """One keep-alive connection per thread and base URL."""

    def __init__(self, max_body: int) -> None:
        self._local = threading.local()
        self._all: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.max_body = max_body

    def _connection(self, base_url: str, timeout: float) -> http.client.HTTPConnection:
        conns: Dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(base_url)
        if conn is None:
            parts = urlsplit(base_url)
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
            conns[base_url] = conn
            with self._lock:
                self._all.append(conn)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def request(
        self, base_url: str, method: str, path: str, headers: Mapping[str, str], timeout: float
    ) -> Tuple[int, http.client.HTTPMessage, bytes]:
        conn = self._connection(base_url, timeout)
        give_up_at = time.monotonic() + timeout
        headers_received = False
        try:
            if conn.sock is None:
                try:
                    conn.connect()
                except socket.timeout:
                    raise _Transient("connect", "connection timed out") from None
                except OSError as exc:
                    raise _Transient("connect", f"cannot connect: {exc.strerror or exc}") from None
            conn.request(method, quote(path, safe=_SAFE_PATH_CHARS), headers=dict(headers))
            response = conn.getresponse()
            headers_received = True
            body = self._read_body(response, give_up_at)
            return response.status, response.msg, body
        except http.client.InvalidURL as exc:
            conn.close()
            raise _Fatal(f"invalid request path: {exc}") from None
        except socket.timeout:
            conn.close()
            if headers_received:
                raise _Transient("slow", f"response body not received within {timeout:g}s") from None
            raise _Transient("timeout", f"no answer within {timeout:g}s") from None
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            conn.close()
            raise _Transient("reset", f"connection failed: {type(exc).__name__}") from None
        except (_Transient, _Fatal):
            conn.close()
            raise

    def _read_body(self, response: http.client.HTTPResponse, give_up_at: float) -> bytes:
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _Fatal(f"response of {declared} bytes exceeds the {self.max_body}-byte limit")
        chunks: List[bytes] = []
        total = 0
        while True:
            if time.monotonic() > give_up_at:
                raise _Transient("slow", "response body too slow")
            chunk = response.read1(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > self.max_body:
                raise _Fatal(f"response exceeds the {self.max_body}-byte limit")
            chunks.append(chunk)
        if declared is not None and declared.isdigit() and total != int(declared):
            raise _Transient("reset", "connection closed mid-body")
        response.read()  # marks the response complete, so the connection can be reused
        return b"".join(chunks)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class ImdsClient:
    """Fetches IMDS paths with one shared token, retries and a run-wide deadline."""

    def __init__(
        self,
        settings: Optional[ClientSettings] = None,
        *,
        candidates: Optional[List[str]] = None,
    ) -> None:
        self.settings = settings = settings or ClientSettings()
        self._candidates = candidates or candidate_urls(settings.endpoint)
        self._deadline_at = time.monotonic() + settings.deadline
        self._http = _Http(settings.max_body)
        self._token_lock = threading.Lock()
        self._token: Optional[str] = None
        self._token_expires = 0.0
        self._generation = 0  # bumped on every new token, so concurrent 401s renew once
        self._v1 = False
        self._base_url: Optional[str] = self._candidates[0] if len(self._candidates) == 1 else None

    # -- public ------------------------------------------------------------
    def fetch(self, path: str, *, deadline: Optional[Deadline] = None) -> bytes:
        """GET one path (relative to /latest/). Raises ImdsNotFound on 404."""
        if deadline is not None:
            self._deadline_at = deadline.at
        url_path = "/latest/" + path
        token, generation = self._current_token()
        status, body = self._get(url_path, token)
        if status == 401 and not self._v1:
            LOG.debug("GET %s: 401, renewing the token once", url_path)
            token, _ = self._renew(generation)
            status, body = self._get(url_path, token)
            if status == 401:
                raise ImdsError(url_path, "401 Unauthorized again after renewing the token")
        return _interpret(url_path, status, body, v1=self._v1)

    def fetch_all(
        self,
        paths: Iterable[str],
        expand: Callable[[str, bytes], List[str]] = lambda p, b: [],
        *,
        deadline: Optional[Deadline] = None,
    ) -> Dict[str, Outcome]:
        """Fetch each distinct path once, concurrently. `expand` turns a directory
        listing into more paths, which are fetched as soon as the listing arrives."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        if deadline is not None:
            self._deadline_at = deadline.at
        wanted = list(dict.fromkeys(paths))
        results: Dict[str, Outcome] = {}
        if not wanted:
            return results
        self._current_token()  # one PUT before the fan-out; raises if IMDS is unusable
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="imds") as pool:
            pending: Dict[Future[Outcome], str] = {}
            seen = set(wanted)

            def submit(p: str) -> None:
                pending[pool.submit(self._outcome, p)] = p

            for path in wanted:
                submit(path)
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in done:
                    path = pending.pop(future)
                    outcome = future.result()
                    results[path] = outcome
                    if isinstance(outcome, bytes):
                        for child in expand(path, outcome):
                            if child not in seen:
                                seen.add(child)
                                submit(child)
        return results

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ImdsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- token -------------------------------------------------------------
    def _current_token(self) -> Tuple[Optional[str], int]:
        with self._token_lock:
            ttl = self.settings.token_ttl
            margin = min(60.0, ttl * 0.1)  # renew before expiry, never mid-request
            if self._v1 or (self._token and time.monotonic() < self._token_expires - margin):
                return self._token, self._generation
            self._obtain_token()
            return self._token, self._generation

    def _renew(self, stale_generation: int) -> Tuple[Optional[str], int]:
        with self._token_lock:
            if self._generation == stale_generation:
                self._obtain_token()
            return self._token, self._generation

    def _obtain_token(self) -> None:
        """PUT for a token (caller holds the lock). With `auto`, the first endpoint
        that answers wins and is used for the rest of the run."""
        started = time.monotonic()
        if self._base_url is None:
            self._base_url, token, ttl = self._race()
        else:
            token, ttl = self._put_token(self._base_url, stop=None)
        self._generation += 1
        if token is None:
            self._v1 = True
            LOG.warning("IMDSv2 unavailable at %s; using IMDSv1 as `imdsv1: fallback` allows", self._base_url)
            return
        self._token = token
        self._token_expires = started + ttl
        LOG.debug("obtained an IMDSv2 token from %s (ttl %ss)", self._base_url, ttl)

    def _race(self) -> Tuple[str, Optional[str], float]:
        """Ask every candidate endpoint for a token at once. The first that answers
        (with a token, or with a definite refusal) decides; silence never does."""
        results: Dict[str, Union[Tuple[Optional[str], float], ImdsError]] = {}
        first: List[str] = []
        done = threading.Event()
        lock = threading.Lock()

        def attempt(url: str) -> None:
            outcome: Union[Tuple[Optional[str], float], ImdsError]
            try:
                outcome = self._put_token(url, stop=done)
            except ImdsError as exc:
                outcome = exc
            with lock:
                results[url] = outcome
                if not first and not isinstance(outcome, ImdsUnreachable):
                    first.append(url)
                if first or len(results) == len(self._candidates):
                    done.set()

        for url in self._candidates:
            threading.Thread(target=attempt, args=(url,), daemon=True).start()
        done.wait(max(0.0, self._deadline_at - time.monotonic()) + self.settings.timeout + 1)
        with lock:
            if first:
                outcome = results[first[0]]
                if isinstance(outcome, ImdsError):
                    raise outcome
                LOG.debug("endpoint %s answered first", first[0])
                return (first[0], *outcome)
            detail = "; ".join(f"{url}: {results.get(url, 'no answer')}" for url in self._candidates)
        raise ImdsUnreachable(TOKEN_PATH, f"no IMDS endpoint answered ({detail})")

    def _ttl_headers(self) -> Dict[str, str]:
        return {TTL_HEADER: str(self.settings.token_ttl)}

    def _put_token(self, base_url: str, stop: Optional[threading.Event]) -> Tuple[Optional[str], float]:
        """A token from `base_url`, or (None, 0) when IMDSv1 fallback applies."""
        hop_suspicions = 0
        while True:
            try:
                status, headers, body = self._retrying(
                    base_url, "PUT", TOKEN_PATH, self._ttl_headers(), stop=stop, give_up_on_timeout=True
                )
            except _PutTimedOut:
                if self._get_answers(base_url):
                    hop_suspicions += 1
                    if self.settings.imdsv1 == "fallback" and self._get_answers(base_url, want_ok=True):
                        return None, 0.0
                    if hop_suspicions >= 2:
                        raise ImdsError(TOKEN_PATH, _HOP_LIMIT_MESSAGE) from None
                continue
            if status == 200 and body.strip():
                try:
                    token = body.decode("ascii").strip()
                except UnicodeDecodeError:
                    raise ImdsError(TOKEN_PATH, "the token is not ASCII; is this IMDS?") from None
                echoed = headers.get(TTL_HEADER, "")
                ttl = min(int(echoed), self.settings.token_ttl) if echoed.isdigit() else self.settings.token_ttl
                return token, float(ttl)
            if status == 403:
                raise ImdsError(
                    TOKEN_PATH,
                    "IMDS endpoint disabled, or request forbidden (HTTP 403 on the token request). "
                    "Check HttpEndpoint in the instance metadata options, and that no proxy adds X-Forwarded-For",
                )
            if status in (404, 405):
                if self.settings.imdsv1 == "fallback":
                    return None, 0.0
                raise ImdsError(
                    TOKEN_PATH,
                    f"IMDS refused the token request (HTTP {status}): it looks IMDSv1-only. "
                    "Set `imdsv1: fallback` in the declaration to allow IMDSv1",
                )
            if status == 400:
                raise ImdsError(TOKEN_PATH, f"token request rejected (HTTP 400); token_ttl {self.settings.token_ttl}")
            raise _unexpected(TOKEN_PATH, status)

    def _get_answers(self, base_url: str, want_ok: bool = False) -> bool:
        """Does a plain GET (no token) get any HTTP answer? Distinguishes a dropped
        PUT response (hop limit) from an endpoint that is simply not there."""
        timeout = min(self.settings.timeout, max(0.05, self._deadline_at - time.monotonic()))
        try:
            status, _, _ = self._http.request(base_url, "GET", "/latest/meta-data/", {}, timeout)
        except (_Transient, _Fatal):
            return False
        return status == 200 if want_ok else True

    # -- requests ----------------------------------------------------------
    def _get(self, url_path: str, token: Optional[str]) -> Tuple[int, bytes]:
        headers = {TOKEN_HEADER: token} if token else {}
        assert self._base_url is not None
        status, _, body = self._retrying(self._base_url, "GET", url_path, headers, stop=None)
        return status, body

    def _outcome(self, path: str) -> Outcome:
        try:
            return self.fetch(path)
        except ImdsError as exc:
            return exc

    def _retrying(
        self,
        base_url: str,
        method: str,
        url_path: str,
        headers: Mapping[str, str],
        *,
        stop: Optional[threading.Event],
        give_up_on_timeout: bool = False,
    ) -> Tuple[int, http.client.HTTPMessage, bytes]:
        """One request with retries on refused/reset/timeouts, 429 and 5xx, with
        exponential backoff and jitter, honouring Retry-After, within the deadline."""
        attempt = 0
        last_problem = "no attempt made"
        while True:
            remaining = self._deadline_at - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                raise ImdsUnreachable(
                    url_path, f"no usable answer within the {self.settings.deadline:g}s deadline ({last_problem})"
                )
            timeout = min(self.settings.timeout, remaining)
            retry_after: Optional[float] = None
            try:
                status, response_headers, body = self._http.request(base_url, method, url_path, headers, timeout)
            except _Transient as exc:
                if give_up_on_timeout and exc.kind == "timeout":
                    raise _PutTimedOut() from None
                last_problem = str(exc)
            except _Fatal as exc:
                raise ImdsError(url_path, str(exc)) from None
            else:
                LOG.debug("%s %s -> %s (%d bytes)", method, url_path, status, len(body))
                if status != 429 and status < 500:
                    return status, response_headers, body
                last_problem = f"HTTP {status}"
                retry_after = _retry_after_seconds(response_headers.get("Retry-After"))
            delay = retry_after if retry_after is not None else _backoff(attempt)
            remaining = self._deadline_at - time.monotonic()
            if delay >= remaining:
                asked = f"IMDS asked to retry after {delay:g}s; " if retry_after is not None else ""
                raise ImdsUnreachable(
                    url_path,
                    f"{asked}no usable answer within the {self.settings.deadline:g}s deadline ({last_problem})",
                )
            LOG.debug("%s %s: %s; retry %d in %.2fs", method, url_path, last_problem, attempt + 1, delay)
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            attempt += 1


class _PutTimedOut(Exception):
    pass


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter: 0.1, 0.2, 0.4 ... capped at 2 s, each ±50%."""
    ceiling = min(2.0, 0.1 * (2.0**attempt))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _retry_after_seconds(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # http.client has imported it already

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _unexpected(url_path: str, status: int) -> ImdsError:
    if 300 <= status < 400:
        return ImdsError(url_path, f"unexpected redirect (HTTP {status}); redirects are never followed")
    return ImdsError(url_path, f"unexpected HTTP {status}")


def _interpret(url_path: str, status: int, body: bytes, *, v1: bool) -> bytes:
    if status == 200:
        return body
    if status == 404:
        raise ImdsNotFound(url_path)
    if status == 401 and v1:
        raise ImdsError(url_path, "401 Unauthorized: IMDS requires a token but did not issue one")
    if status == 403:
        raise ImdsError(url_path, "IMDS endpoint disabled, or request forbidden (HTTP 403)")
    raise _unexpected(url_path, status)
