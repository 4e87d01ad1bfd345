"""Connection settings and where IMDS is: every value checked, every problem named.

`ClientSettings` refuses what cannot work (a NaN timeout, a TTL IMDS would reject, an
endpoint that is not an http://host[:port] URL) with a SettingsError naming the setting,
so that a bad value is a one-line error, never a traceback or a hang. Standard library only.
"""

from __future__ import annotations

from ..deadline import RUN_SECONDS
from ..errors import ProblemsError

# `cc-imds get` imports this cold in every script that calls it: no typing, no dataclasses
# (which imports inspect) at run time. mypy treats a TYPE_CHECKING of our own like typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Mapping, Optional, Tuple

IPV4_URL = "http://169.254.169.254"
IPV6_URL = "http://[fd00:ec2::254]"
ENV_ENDPOINT = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
ENV_ENDPOINT_MODE = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"
# Seconds, the schema's bounds for the declaration's `timeout` and `deadline`, and `get`'s
# --timeout and --deadline: every place that reads one checks it against these.
TIMEOUT_RANGE = (0.05, 60.0)
DEADLINE_RANGE = (0.1, 3600.0)


class SettingsError(ProblemsError):
    """A connection setting is out of range or cannot be understood."""

    exit_code = 1


class EndpointError(SettingsError):
    """The endpoint setting cannot be understood."""

    def __init__(self, message: str) -> None:
        super().__init__([message])


class ClientSettings:
    """Connection settings. Defaults suit boot: IMDS is normally up by the time
    cloud-init's config stage runs, so failures are rare and a bounded wait is cheap.
    Immutable, like a frozen dataclass, and checked when made."""

    # The defaults, readable on the class as on a dataclass (ClientSettings.deadline).
    endpoint: str = "auto"
    imdsv1: str = "never"  # never | fallback
    token_ttl: int = 21600  # seconds; IMDS accepts 1..21600
    timeout: float = 2.0  # one attempt: connect, send, headers and body
    deadline: float = RUN_SECONDS  # the whole run, retries included
    concurrency: int = 8  # parallel GETs, one keep-alive connection each
    max_body: int = 4 * 1024 * 1024  # user-data is at most 16 KiB; nothing legitimate is near this

    _FIELDS = ("endpoint", "imdsv1", "token_ttl", "timeout", "deadline", "concurrency", "max_body")

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
        given = (endpoint, imdsv1, token_ttl, timeout, deadline, concurrency, max_body)
        for name, value in zip(self._FIELDS, given):
            object.__setattr__(self, name, value)  # immutable to everyone else
        problems = [
            *_seconds_problem("timeout", timeout, TIMEOUT_RANGE),
            *_seconds_problem("deadline", deadline, DEADLINE_RANGE),
            *_integer_problem("token_ttl", token_ttl, 1, 21600),
            *_integer_problem("concurrency", concurrency, 1, 32),
            *_integer_problem("max_body", max_body, 1, 1 << 30),
        ]
        if imdsv1 not in ("never", "fallback"):
            problems.append(f"imdsv1: must be never or fallback, not {imdsv1!r}")
        if problems:
            raise SettingsError(problems)
        candidate_urls(endpoint)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ClientSettings is immutable; cannot set {name}")

    def _values(self) -> Tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClientSettings) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return "ClientSettings(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS) + ")"


def seconds_in_range(value: object, bounds: Tuple[float, float]) -> bool:
    """A number (not a bool) from bounds[0] to bounds[1]: never nan, inf or a huge int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]


def _seconds_problem(name: str, value: object, bounds: Tuple[float, float]) -> List[str]:
    if seconds_in_range(value, bounds):
        return []
    return [f"{name}: must be a number of seconds from {bounds[0]:g} to {bounds[1]:g}, not {value!r}"]


def _integer_problem(name: str, value: object, low: int, high: int) -> List[str]:
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return [] if ok else [f"{name}: must be a whole number from {low} to {high}, not {value!r}"]


def choose_endpoint(
    cli: Optional[str], declared: Optional[str], environ: Mapping[str, str]
) -> Tuple[str, str]:
    """Pick the endpoint and say where it came from; an endpoint that cannot be used is an
    EndpointError naming where it came from.

    Precedence, highest first: the CLI's --endpoint, AWS_EC2_METADATA_SERVICE_ENDPOINT,
    AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE (IPv4 | IPv6), the declaration's `endpoint`,
    then `auto`. The environment outranks the declaration as it does for AWS SDKs.
    """
    chosen: Tuple[str, str]
    mode = environ.get(ENV_ENDPOINT_MODE, "").strip().lower()
    if cli:
        chosen = cli, "--endpoint"
    elif environ.get(ENV_ENDPOINT):
        chosen = environ[ENV_ENDPOINT], ENV_ENDPOINT
    elif mode:
        if mode not in ("ipv4", "ipv6"):
            raise EndpointError(f"{ENV_ENDPOINT_MODE}={environ[ENV_ENDPOINT_MODE]!r}: expected IPv4 or IPv6")
        chosen = mode, ENV_ENDPOINT_MODE
    elif declared:
        chosen = declared, "declaration"
    else:
        chosen = "auto", "default"
    try:
        candidate_urls(chosen[0])
    except EndpointError as exc:
        raise EndpointError(f"{chosen[1]}: {exc}") from None
    return chosen


def _plain_ipv4_url(endpoint: str) -> bool:
    """http://A.B.C.D or http://A.B.C.D:PORT, written exactly as candidate_urls writes it back
    (no leading zeros, port 1-65535)."""
    if not endpoint.startswith("http://"):
        return False
    host, colon, port = endpoint[len("http://"):].partition(":")
    octets = host.split(".")
    return len(octets) == 4 and all(_canonical_number(o, 255) for o in octets) and (
        not colon or (_canonical_number(port, 65535) and port != "0"))


def _canonical_number(text: str, high: int) -> bool:
    return text.isascii() and text.isdigit() and str(int(text)) == text and int(text) <= high


_HOSTNAME = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"


def candidate_urls(endpoint: str) -> List[str]:
    """The base URLs an endpoint setting stands for; `auto` races both."""
    named = {"ipv4": [IPV4_URL], "ipv6": [IPV6_URL], "auto": [IPV4_URL, IPV6_URL]}
    if isinstance(endpoint, str) and endpoint in named:
        return named[endpoint]
    expected = f"endpoint {endpoint!r}: expected auto, ipv4, ipv6 or http://host[:port]"
    if not isinstance(endpoint, str) or not endpoint.isprintable() or " " in endpoint:
        raise EndpointError(expected)
    if _plain_ipv4_url(endpoint):
        return [endpoint]
    # Only other URLs need these: the default endpoints, and a plain one such as the
    # emulator's, start without paying for them.
    import ipaddress
    import re
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise EndpointError(f"{expected} ({exc})") from None
    host = parts.hostname or ""
    extras = parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password
    if parts.scheme != "http" or not host or extras:
        raise EndpointError(expected)
    if port == 0:
        raise EndpointError(f"{expected} (port 0)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(_HOSTNAME, host):
            raise EndpointError(f"{expected} (invalid host name)") from None
        netloc = host
    else:
        netloc = f"[{address}]" if address.version == 6 else str(address)
    return [f"http://{netloc}" + (f":{port}" if port is not None else "")]
