"""The IMDSv2 client: one shared token, retries and deadlines.

This module holds the protocol; settings and endpoints are checked in `settings`, bytes
move through `transport` (our own small HTTP/1.1 client over sockets), waits are paced by
`retry`. Standard library only. Environment proxies (`HTTP_PROXY`, `http_proxy`) are never
consulted and redirects are never followed: a 3xx is reported as an error. The token is
sent only to the chosen endpoint, is checked to be a plain header value when it arrives,
and is never logged.

Every request, and every wait between requests, ends by min(attempt timeout, deadline).
The deadline is the operation's (`fetch(..., deadline=...)`), or the run deadline the
client made when it was constructed. One client can serve many operations: the token is
reused across them and renewed before it expires.
"""

from __future__ import annotations

import os
import time
from _thread import allocate_lock, start_new_thread

from ..deadline import Deadline
from ..errors import CcImdsError, ImdsError, ImdsNotFound, ImdsUnreachable
from ..logs import get_logger
from . import retry
from .settings import (
    ENV_ENDPOINT,
    ENV_ENDPOINT_MODE,
    IPV4_URL,
    IPV6_URL,
    ClientSettings,
    EndpointError,
    SettingsError,
    candidate_urls,
    choose_endpoint,
)
from .transport import Fatal, Response, Transient, Transport

# `cc-imds get` runs this module cold in every script that calls it, so it imports only
# what a single fetch needs (not logging, typing or a thread pool; those are imported where
# used). mypy treats a TYPE_CHECKING of our own like typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from _thread import LockType
    from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

    Outcome = Union[bytes, ImdsError]
    Expander = Callable[[str, bytes], List[str]]
    Granted = Optional[Tuple[str, float]]  # (token, lifetime in seconds), or None for IMDSv1 fallback

# Settings and endpoints live in .settings; they are part of this module's interface too.
__all__ = [
    "ENV_DISABLED",
    "ENV_ENDPOINT",
    "ENV_ENDPOINT_MODE",
    "IPV4_URL",
    "IPV6_URL",
    "ClientSettings",
    "EndpointError",
    "ImdsClient",
    "MetadataDisabled",
    "SettingsError",
    "candidate_urls",
    "choose_endpoint",
]

LOG = get_logger(__name__)

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
ENV_DISABLED = "AWS_EC2_METADATA_DISABLED"

# A token is a header value: printable ASCII without spaces. Real ones are about 56 characters.
TOKEN_MAX_LENGTH = 4096
# After a 401, a request retries with a newer token while its deadline allows; renewals
# after a renewed token was refused unused are paced by the backoff. But a client that has
# never had a token accepted stops when this many renewed tokens in a row are refused:
# that IMDS refuses every token, and renewing again cannot help.
MAX_FRESH_REFUSALS = 2

_NO_ATTEMPT = "no attempt made"
_HOP_LIMIT_MESSAGE = (
    "the token request (PUT) timed out while plain GET requests are answered: the PUT "
    "response hop limit (HttpPutResponseHopLimit) is likely too low for this host. "
    "Containers behind a bridge need 2 or more: "
    "aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2"
)


class MetadataDisabled(CcImdsError):
    """AWS_EC2_METADATA_DISABLED=true: IMDS must not be asked anything."""

    exit_code = 3


def _no_children(path: str, body: bytes) -> List[str]:
    return []


class _Token:
    """One session token (or None: IMDSv1), and what the client learnt about it."""

    __slots__ = ("accepted", "after_401", "generation", "refused", "renew_at", "value")

    def __init__(self, value: Optional[str], generation: int, renew_at: float, after_401: bool) -> None:
        self.value = value
        self.generation = generation  # bumped for every new token, so concurrent 401s renew once
        self.renew_at = renew_at  # time.monotonic() at which to get a new one, before it expires
        self.after_401 = after_401  # obtained because the previous one was refused
        self.accepted = False  # some request got a 200 or 404 with it
        self.refused = False  # some request got a 401 with it

    def headers(self) -> Dict[str, str]:
        return {TOKEN_HEADER: self.value} if self.value is not None else {}


class ImdsClient:
    """Fetches IMDS paths with one shared token, retries and deadlines."""

    def __init__(
        self,
        settings: Optional[ClientSettings] = None,
        *,
        candidates: Optional[List[str]] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.settings = settings = settings or ClientSettings()
        self._candidates = candidates or candidate_urls(settings.endpoint)
        self._run_deadline = Deadline(settings.deadline)
        environ = os.environ if environ is None else environ
        self._disabled = environ.get(ENV_DISABLED, "").strip().lower() == "true"
        self._transport = Transport(max_idle=settings.concurrency + 1)
        self._token_lock = allocate_lock()  # threading's Lock, without importing threading
        self._token: Optional[_Token] = None
        self._issued: List[str] = []  # every token value, for scrubbing messages (issued_tokens)
        self._generation = 0
        self._fresh_refusals = 0  # renewed tokens refused in a row before any request got through with them
        self._ever_accepted = False
        self._base_url: Optional[str] = self._candidates[0] if len(self._candidates) == 1 else None

    # -- public ------------------------------------------------------------
    def fetch(self, path: str, *, deadline: Optional[Deadline] = None) -> bytes:
        """GET one path (relative to /latest/). Raises ImdsNotFound on 404."""
        self._check_enabled()
        return self._fetch(path, self._run_deadline if deadline is None else deadline)

    def fetch_all(
        self, paths: Iterable[str], expand: Expander = _no_children, *, deadline: Optional[Deadline] = None
    ) -> Dict[str, Outcome]:
        """Fetch each distinct path once, concurrently. `expand` turns a directory
        listing into more paths, which are fetched as soon as the listing arrives."""
        self._check_enabled()
        deadline = self._run_deadline if deadline is None else deadline
        wanted = list(dict.fromkeys(paths))
        results: Dict[str, Outcome] = {}
        if not wanted:
            return results
        self._token_for(deadline)  # one PUT before the fan-out; raises if IMDS is unusable
        if expand is _no_children:
            return self._fetch_each(wanted, deadline)
        return self._fetch_expanding(wanted, expand, deadline)

    def _fetch_expanding(self, wanted: List[str], expand: Expander, deadline: Deadline) -> Dict[str, Outcome]:
        """Paths whose listings name more paths: up to `concurrency` threads (this one among
        them, the others started with _thread, as in _fetch_each) each take the next path; a listing's entries join the
        queue as soon as it arrives, and more threads start while there is work for them. No
        thread pool: concurrent.futures would stay resident in the watcher (0.7 MiB), which
        refreshes a tag directory this way."""
        results: Dict[str, Outcome] = {}
        failures: List[BaseException] = []
        todo = list(wanted)  # every path to fetch, in order; `taken` of them are taken
        taken = [0]
        seen = set(wanted)
        lock = allocate_lock()
        running = [0]  # threads that may still take a path
        finished = allocate_lock()
        finished.acquire()  # released by the last thread to leave

        def work() -> None:
            while True:
                with lock:
                    if failures or taken[0] >= len(todo):
                        running[0] -= 1
                        if running[0] == 0:
                            finished.release()
                        return
                    path = todo[taken[0]]
                    taken[0] += 1
                try:
                    outcome = self._outcome(path, deadline)
                    children = expand(path, outcome) if isinstance(outcome, bytes) else []
                except BaseException as exc:  # noqa: BLE001 - raised again below, in the caller's thread
                    with lock:
                        failures.append(exc)
                    continue
                with lock:
                    results[path] = outcome
                    for child in children:
                        if child not in seen:
                            seen.add(child)
                            todo.append(child)
                    more = max(0, min(self.settings.concurrency - running[0], len(todo) - taken[0]))
                    running[0] += more
                helpers(more)

        def helpers(count: int) -> None:
            """Start `count` more threads, already counted in `running`. The calling thread is
            counted too and goes on working, so the work is done even if none can start."""
            for started in range(count):
                try:
                    start_new_thread(work, ())
                except RuntimeError:  # no more threads: fewer do the work
                    with lock:
                        running[0] -= count - started
                    return

        with lock:
            running[0] = min(self.settings.concurrency, len(todo))  # this thread among them
        helpers(running[0] - 1)
        work()
        finished.acquire()  # every thread left: every request ended by the deadline
        if failures:
            raise failures[0]
        return results

    def _fetch_each(self, paths: List[str], deadline: Deadline) -> Dict[str, Outcome]:
        """Paths known in advance, fetched by up to `concurrency` threads (this one among them)
        that each take the next path. Threads are started with _thread: a thread pool would
        import concurrent.futures and logging, and threading alone is milliseconds of a cold
        `cc-imds get`. No thread at all for one path."""
        if len(paths) == 1:
            return {paths[0]: self._outcome(paths[0], deadline)}
        results: Dict[str, Outcome] = {}
        failures: List[BaseException] = []
        todo = iter(paths)
        take = allocate_lock()

        def work() -> None:
            try:
                while not failures:
                    with take:
                        path = next(todo, None)
                    if path is None:
                        return
                    results[path] = self._outcome(path, deadline)
            except BaseException as exc:  # noqa: BLE001 - raised again below, in the caller's thread
                failures.append(exc)

        def helper(finished: LockType) -> None:
            try:
                work()
            finally:
                finished.release()

        helpers = []
        for _ in range(min(self.settings.concurrency, len(paths)) - 1):
            finished = allocate_lock()
            finished.acquire()
            start_new_thread(helper, (finished,))
            helpers.append(finished)
        work()
        for finished in helpers:
            finished.acquire()  # that helper is done: every request ends by the deadline
        if failures:
            raise failures[0]
        return {path: results[path] for path in paths}

    def issued_tokens(self) -> List[str]:
        """Every token this client obtained: for scrubbing messages, never for showing."""
        return list(self._issued)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> ImdsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_enabled(self) -> None:
        if self._disabled:
            raise MetadataDisabled(
                f"{ENV_DISABLED} is set to true: instance metadata access is turned off in this "
                "environment, so no request was sent"
            )

    # -- requests ----------------------------------------------------------
    def _fetch(self, path: str, deadline: Deadline) -> bytes:
        url_path = "/latest/" + path
        token = self._token_for(deadline)
        problem = _NO_ATTEMPT
        while True:
            assert self._base_url is not None  # set once a token (or IMDSv1) was obtained
            response = self._retrying(self._base_url, "GET", url_path, token.headers(), deadline, last_problem=problem)
            if response.status != 401 or token.value is None:
                if response.status in (200, 404):
                    token.accepted = self._ever_accepted = True
                return _interpret(url_path, response.status, response.body, v1=token.value is None)
            LOG.debug("GET %s: 401, retrying with a newer token", url_path)
            problem = "401 Unauthorized"
            token = self._replacement(token, deadline, url_path)

    def _outcome(self, path: str, deadline: Deadline) -> Outcome:
        try:
            return self._fetch(path, deadline)
        except ImdsError as exc:
            return exc

    def _retrying(
        self,
        base_url: str,
        method: str,
        url_path: str,
        headers: Mapping[str, str],
        deadline: Deadline,
        *,
        stop: Optional[threading.Event] = None,
        put: bool = False,
        last_problem: str = _NO_ATTEMPT,
    ) -> Response:
        """One request with retries on refused/reset/timeouts, 429 and 5xx, with
        exponential backoff and jitter, honouring Retry-After, within the deadline.
        A PUT that gets no answer at all raises _PutTimedOut: it may mean the hop limit."""
        attempt = 0
        max_body = 64 * 1024 if put else self.settings.max_body  # a token's length is checked on arrival
        while True:
            remaining = deadline.remaining()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                raise ImdsUnreachable(url_path, _past(deadline, last_problem))
            cut_short = remaining < self.settings.timeout  # the deadline ends this attempt, not the timeout
            give_up_at = time.monotonic() + min(self.settings.timeout, remaining)
            asked: Optional[float] = None
            try:
                response = self._transport.request(
                    base_url, method, url_path, headers, give_up_at=give_up_at, max_body=max_body
                )
            except Transient as exc:
                if cut_short and exc.kind in ("timeout", "slow") and last_problem != _NO_ATTEMPT:
                    continue  # the deadline passed: report what went wrong before it
                if put and exc.kind == "timeout" and not cut_short:
                    raise _PutTimedOut(f"token request: {exc}") from None
                last_problem = str(exc)
            except Fatal as exc:
                raise ImdsError(url_path, str(exc)) from None
            else:
                LOG.debug("%s %s -> %s (%d bytes)", method, url_path, response.status, len(response.body))
                if response.status != 429 and response.status < 500:
                    return response
                last_problem = f"HTTP {response.status}"
                asked = retry.retry_after(response.headers.get("Retry-After"))
            pause = retry.delay(attempt, asked)
            if pause >= deadline.remaining():
                prefix = f"IMDS asked to retry after {asked:g}s; " if asked is not None and asked >= pause else ""
                raise ImdsUnreachable(url_path, prefix + _past(deadline, last_problem))
            LOG.debug("%s %s: %s; retry %d in %.2fs", method, url_path, last_problem, attempt + 1, pause)
            if stop is not None:
                stop.wait(pause)
            else:
                time.sleep(pause)
            attempt += 1

    # -- token -------------------------------------------------------------
    def _take_token_lock(self, deadline: Deadline) -> None:
        if not self._token_lock.acquire(timeout=deadline.remaining()):
            raise ImdsUnreachable(TOKEN_PATH, _past(deadline, "waiting for the token"))

    def _token_for(self, deadline: Deadline) -> _Token:
        """The current token, renewed first if it is about to expire."""
        self._take_token_lock(deadline)
        try:
            token = self._token
            if token is None or time.monotonic() >= token.renew_at:
                token = self._token = self._obtain(deadline, after_401=False)
            return token
        finally:
            self._token_lock.release()

    def _replacement(self, refused: _Token, deadline: Deadline, url_path: str) -> _Token:
        """A token newer than `refused`: another request's renewal, or a new one."""
        self._take_token_lock(deadline)
        try:
            current = self._token
            if current is not None and current.generation > refused.generation:
                return current
            if not refused.refused:
                refused.refused = True
                fresh_and_refused = refused.after_401 and not refused.accepted
                self._fresh_refusals = self._fresh_refusals + 1 if fresh_and_refused else 0
            if self._fresh_refusals >= MAX_FRESH_REFUSALS and not self._ever_accepted:
                raise ImdsError(url_path, "401 Unauthorized again after renewing the token")
            if self._fresh_refusals:
                # Tokens are being revoked as fast as they are issued (or every token is refused):
                # pace the renewals as any retry is paced.
                pause = retry.backoff(self._fresh_refusals - 1)
                if pause >= deadline.remaining():
                    raise ImdsUnreachable(
                        url_path,
                        "401 Unauthorized again after renewing the token; "
                        f"no usable answer within the {deadline.seconds:g}s deadline",
                    )
                time.sleep(pause)
            token = self._token = self._obtain(deadline, after_401=True)
            return token
        finally:
            self._token_lock.release()

    def _obtain(self, deadline: Deadline, *, after_401: bool) -> _Token:
        """PUT for a token (caller holds the lock). With `auto`, the first endpoint
        that answers wins and is used from then on."""
        started = time.monotonic()
        if self._base_url is None:
            self._base_url, granted = self._race(deadline)
        else:
            granted = self._put_token(self._base_url, deadline, stop=None)
        self._generation += 1
        if granted is None:
            LOG.warning("IMDSv2 unavailable at %s; using IMDSv1 as `imdsv1: fallback` allows", self._base_url)
            return _Token(None, self._generation, float("inf"), after_401)
        value, ttl = granted
        self._issued.append(value)
        LOG.debug("obtained an IMDSv2 token from %s (ttl %gs)", self._base_url, ttl)
        renew_at = started + ttl - min(60.0, ttl * 0.1)  # renew before expiry, never mid-request
        return _Token(value, self._generation, renew_at, after_401)

    def _race(self, deadline: Deadline) -> Tuple[str, Granted]:
        """Ask every candidate endpoint for a token at once. The first that answers
        (with a token, or with a definite refusal) decides; silence never does."""
        import threading  # only here and for many values: one value from one endpoint needs no thread

        results: Dict[str, Union[Granted, ImdsError]] = {}
        winner: List[str] = []
        done = threading.Event()
        lock = threading.Lock()

        def attempt(url: str) -> None:
            outcome: Union[Granted, ImdsError]
            try:
                outcome = self._put_token(url, deadline, stop=done)
            except ImdsError as exc:
                outcome = exc
            with lock:
                results[url] = outcome
                if not winner and not isinstance(outcome, ImdsUnreachable):
                    winner.append(url)
                if winner or len(results) == len(self._candidates):
                    done.set()

        for url in self._candidates:
            threading.Thread(target=attempt, args=(url,), name="imds-race", daemon=True).start()
        done.wait(deadline.remaining() + 0.05)  # the attempts end by the deadline; a moment to report
        with lock:
            if winner:
                outcome = results[winner[0]]
                if isinstance(outcome, ImdsError):
                    raise outcome
                LOG.debug("endpoint %s answered first", winner[0])
                return winner[0], outcome
            detail = "; ".join(f"{url}: {results.get(url, 'no answer')}" for url in self._candidates)
        raise ImdsUnreachable(TOKEN_PATH, f"no IMDS endpoint answered ({detail})")

    def _put_token(self, base_url: str, deadline: Deadline, stop: Optional[threading.Event]) -> Granted:
        """A token from `base_url`, or None when IMDSv1 fallback applies."""
        hop_suspicions = 0
        ttl_header = {TTL_HEADER: str(self.settings.token_ttl)}
        problem = _NO_ATTEMPT
        while True:
            try:
                response = self._retrying(
                    base_url, "PUT", TOKEN_PATH, ttl_header, deadline, stop=stop, put=True, last_problem=problem
                )
            except _PutTimedOut as exc:
                problem = str(exc)
                if self._get_answers(base_url, deadline):
                    problem += ", while a plain GET was answered"
                    hop_suspicions += 1
                    if self.settings.imdsv1 == "fallback" and self._get_answers(base_url, deadline, want_ok=True):
                        return None
                    if hop_suspicions >= 2:
                        raise ImdsError(TOKEN_PATH, _HOP_LIMIT_MESSAGE) from None
                continue
            status = response.status
            if status == 200:
                return self._granted(response)
            if status == 403:
                raise ImdsError(
                    TOKEN_PATH,
                    "IMDS endpoint disabled, or request forbidden (HTTP 403 on the token request). "
                    "Check HttpEndpoint in the instance metadata options, and that no proxy adds X-Forwarded-For",
                )
            if status in (404, 405):
                if self.settings.imdsv1 == "fallback":
                    return None
                raise ImdsError(
                    TOKEN_PATH,
                    f"IMDS refused the token request (HTTP {status}): it looks IMDSv1-only. "
                    "Set `imdsv1: fallback` in the declaration to allow IMDSv1",
                )
            if status == 400:
                raise ImdsError(TOKEN_PATH, f"token request rejected (HTTP 400); token_ttl {self.settings.token_ttl}")
            raise _unexpected(TOKEN_PATH, status)

    def _granted(self, response: Response) -> Tuple[str, float]:
        """The token of a 200 answer, checked to be a plain header value, and its lifetime.
        A server may grant a shorter lifetime than asked (never under 1 s); an echo of 0,
        of more than was asked, or of nothing readable leaves the lifetime asked for."""
        body = response.body.strip()
        if not (0 < len(body) <= TOKEN_MAX_LENGTH and all(0x21 <= b <= 0x7E for b in body)):
            raise ImdsError(
                TOKEN_PATH,
                f"IMDS answered the token request with {len(response.body)} bytes that are not a usable "
                f"token (1 to {TOKEN_MAX_LENGTH} printable ASCII characters, no spaces or line breaks); is this IMDS?",
            )
        ttl = self.settings.token_ttl
        echoed = (response.headers.get(TTL_HEADER) or "").strip()
        if echoed.isascii() and echoed.isdigit() and len(echoed) <= 5 and 1 <= int(echoed) < ttl:
            ttl = int(echoed)
        return body.decode("ascii"), float(ttl)

    def _get_answers(self, base_url: str, deadline: Deadline, want_ok: bool = False) -> bool:
        """Does a plain GET (no token) get any HTTP answer? Distinguishes a dropped
        PUT response (hop limit) from an endpoint that is simply not there."""
        remaining = deadline.remaining()
        if remaining <= 0:
            return False
        give_up_at = time.monotonic() + min(self.settings.timeout, remaining)
        try:
            response = self._transport.request(
                base_url, "GET", "/latest/meta-data/", {}, give_up_at=give_up_at, max_body=self.settings.max_body
            )
        except (Transient, Fatal):
            return False
        return response.status == 200 if want_ok else True


class _PutTimedOut(Exception):
    pass


def _past(deadline: Deadline, last_problem: str) -> str:
    return f"no usable answer within the {deadline.seconds:g}s deadline ({last_problem})"


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

