"""How long to wait before retrying an IMDS request: backoff with jitter, and Retry-After.

Floors and caps everywhere, so that no answer a server gives can make the client spin or
overflow: a wait is never shorter than the backoff (Retry-After can only lengthen it), the
exponent stops growing after a few attempts, and a Retry-After is read as at most a day.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing costs every cold `cc-imds get`; mypy reads this like typing's
if TYPE_CHECKING:
    from typing import Callable, Optional

BACKOFF_FIRST = 0.1  # seconds: the first retry waits 0.05 to 0.1 s
BACKOFF_CAP = 2.0  # seconds: later retries wait 1 to 2 s each
RETRY_AFTER_CAP = 86400.0  # a Retry-After longer than this is read as this (any deadline is shorter)
_MAX_EXPONENT = 5  # 0.1 * 2**5 = 3.2 s, already past the cap


def backoff(attempt: int, uniform: Optional[Callable[[float, float], float]] = None) -> float:
    """The wait after failed attempt number `attempt` (0 for the first): 0.1, 0.2, 0.4 ... s,
    capped at 2 s, each drawn from its upper half (jitter) so retries from many instances spread."""
    if uniform is None:
        import random  # only once a retry is due: a `cc-imds get` that succeeds never needs it

        uniform = random.uniform
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))
    return ceiling / 2 + uniform(0.0, ceiling / 2)


def retry_after(value: Optional[str], now: Callable[[], float] = time.time) -> Optional[float]:
    """Seconds a Retry-After header asks for (delay-seconds or an HTTP date), or None when
    there is none or it cannot be read. Never negative, never more than RETRY_AFTER_CAP."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # delay-seconds
        return min(float(value), RETRY_AFTER_CAP) if len(value) <= 10 else RETRY_AFTER_CAP
    import email.utils  # only for the rare HTTP-date form

    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        when = float(email.utils.mktime_tz(parsed))
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return min(max(0.0, when - now()), RETRY_AFTER_CAP)


def delay(attempt: int, asked: Optional[float]) -> float:
    """The wait before the next attempt: the backoff, or longer if the server asked for it."""
    wait = backoff(attempt)
    return wait if asked is None else max(asked, wait)
