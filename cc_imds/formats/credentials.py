"""Role credentials from IMDS, and the exact bytes of the files AWS clients read them from.

`process` is the document an AWS SDK's `credential_process` prints (the SDKs' "sourcing
credentials with an external process" contract): a JSON object with `Version: 1`,
`AccessKeyId`, `SecretAccessKey`, `SessionToken` and `Expiration`, an ISO 8601 UTC time.
A client that reads it through `credential_process = cat FILE` runs the command again once
`Expiration` comes near, and so picks up the keys the watcher wrote in the meantime.

`credentials-file` is the shared credentials file (`.aws/credentials` in a home directory): one
`[profile]` section with `aws_access_key_id`, `aws_secret_access_key` and `aws_session_token`.
SDKs read it once, at start: a process holding it must be restarted (`on_change`) to see
new keys.

IMDS answers are untrusted. A credential document is used only if `Code` is `Success`, every
field is a string of the characters AWS uses for it and of a sane length, and `Expiration`
is a UTC time. Anything else is refused, with a message that never holds a field's value:
nothing that could break out of a JSON string or an INI line is ever written.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple, Union

from ..jsontext import parse

FORMATS = ("process", "credentials-file")
DEFAULT_PROFILE = "default"
CREDENTIALS_DIR = "meta-data/iam/security-credentials/"
PLACEHOLDER = "<redacted>"

# IAM role names: letters, digits and +=,.@_- (at most 64). The schema checks a named role
# with the same pattern; IMDS's listing is checked here again.
ROLE_NAME = re.compile(r"^[A-Za-z0-9_+=,.@-]{1,64}$")
# Access key ids are [A-Z0-9] (AKIA..., ASIA...); AWS documents 16 to 128 word characters.
_ACCESS_KEY_ID = re.compile(r"^[A-Za-z0-9_]{16,128}$")
# Secret keys and session tokens are base64 (some implementations use the URL-safe alphabet).
_SECRET = re.compile(r"^[A-Za-z0-9+/=_-]{16,256}$")
_TOKEN = re.compile(r"^[A-Za-z0-9+/=_-]{16,16384}$")
_EXPIRATION = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?Z$")
_FIELDS = (("AccessKeyId", _ACCESS_KEY_ID, "16 to 128 letters and digits"),
           ("SecretAccessKey", _SECRET, "16 to 256 base64 characters"),
           ("Token", _TOKEN, "16 to 16384 base64 characters"))


class CredentialProblem(ValueError):
    """A credential document that cannot be used, or no role to take one from. The message
    names fields and roles, never a field's value."""


@dataclass(frozen=True)
class RoleCredentials:
    role: str
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: str  # `2026-11-28T15:00:00Z`: whole seconds, UTC

    def __repr__(self) -> str:  # a stray repr in a message or a traceback shows no key
        return f"RoleCredentials(role={self.role!r}, expiration={self.expiration!r})"

    def redacted(self) -> RoleCredentials:
        return RoleCredentials(self.role, PLACEHOLDER, PLACEHOLDER, PLACEHOLDER, self.expiration)


def expiration_text(raw: object) -> str:
    """IMDS's `Expiration` as the SDKs parse it: `YYYY-MM-DDTHH:MM:SSZ`. Fractions of a second
    are dropped (the keys then look valid for less than a second less, never longer)."""
    match = _EXPIRATION.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise CredentialProblem("Expiration is not a UTC time such as 2026-11-28T15:00:00Z")
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        when = datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise CredentialProblem("Expiration is not a valid date and time") from None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_document(role: str, body: Union[str, bytes]) -> RoleCredentials:
    """The credentials in one role's document from meta-data/iam/security-credentials/ROLE."""
    where = f"the credential document of role {role}"
    try:
        document = parse(body)
    except ValueError:  # not JSON, or past a bound (JsonRefused)
        raise CredentialProblem(f"{where} is not a JSON document") from None
    if not isinstance(document, dict):
        raise CredentialProblem(f"{where} is not a JSON object")
    if document.get("Code") != "Success":
        code = document.get("Code")
        state = "has no Code" if code is None else "has a Code other than Success"
        raise CredentialProblem(f"{where} {state}: IMDS could not get credentials for this role")
    found = []
    for name, pattern, meaning in _FIELDS:
        value = document.get(name)
        if not isinstance(value, str):
            raise CredentialProblem(f"{where} has no {name} string")
        if not pattern.match(value):
            raise CredentialProblem(f"{where}: {name} is not {meaning}")
        found.append(value)
    try:
        expiration = expiration_text(document.get("Expiration"))
    except CredentialProblem as exc:
        raise CredentialProblem(f"{where}: {exc}") from None
    return RoleCredentials(role, found[0], found[1], found[2], expiration)


def pick_role(value: Union[str, bytes, Mapping[str, str]], named: Optional[str]) -> Tuple[str, Union[str, bytes]]:
    """(role, document). `value` is the named role's document, or, when no role is named,
    the whole listing of meta-data/iam/security-credentials/ as {role: document}: the
    instance's only role is taken."""
    if named is not None:
        if isinstance(value, Mapping):
            raise CredentialProblem(f"role {named}: expected one credential document, got a listing")
        return named, value
    if not isinstance(value, Mapping):
        raise CredentialProblem(f"expected the listing of {CREDENTIALS_DIR}, got one document")
    roles = sorted(value)
    if not roles:
        raise CredentialProblem(f"IMDS lists no role under {CREDENTIALS_DIR}: the instance has no instance "
                                "profile with a role, or it is still being attached")
    if len(roles) > 1:
        raise CredentialProblem(f"IMDS lists {len(roles)} roles under {CREDENTIALS_DIR} ({', '.join(roles)}): "
                                "name the one to use with `role:`")
    bad = [r for r in roles if not ROLE_NAME.match(r)]
    if bad:
        raise CredentialProblem(f"IMDS lists a role whose name is not an IAM role name under {CREDENTIALS_DIR}")
    return roles[0], value[roles[0]]


def render_process(credentials: RoleCredentials) -> bytes:
    """What `credential_process` must print: botocore's ProcessProvider wants Version 1 and
    reads AccessKeyId, SecretAccessKey, SessionToken and Expiration."""
    document = {
        "Version": 1,
        "AccessKeyId": credentials.access_key_id,
        "SecretAccessKey": credentials.secret_access_key,
        "SessionToken": credentials.session_token,
        "Expiration": credentials.expiration,
    }
    return (json.dumps(document, indent=2) + "\n").encode("ascii")


def render_shared(credentials: RoleCredentials, profile: str) -> bytes:
    """The shared credentials file, one profile. Every value is checked again to be one INI
    value on one line: no line break, no `[`, `=`-free name, no surrounding space."""
    lines = [f"[{_ini_word(profile, 'profile')}]"]
    for key, value in (("aws_access_key_id", credentials.access_key_id),
                       ("aws_secret_access_key", credentials.secret_access_key),
                       ("aws_session_token", credentials.session_token)):
        lines.append(f"{key} = {_ini_value(value, key)}")
    return ("\n".join(lines) + "\n").encode("ascii")


def _ini_word(text: str, what: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.+=,@-]{1,64}$", text):
        raise CredentialProblem(f"the {what} name is not 1 to 64 letters, digits and _.+=,@-")
    return text


def _ini_value(text: str, what: str) -> str:
    if text != PLACEHOLDER and not re.match(r"^[A-Za-z0-9+/=_-]+$", text):
        raise CredentialProblem(f"{what} holds characters an INI value cannot carry on one line")
    return text


def render(fmt: str, value: Union[str, bytes, Mapping[str, str]], role: Optional[str], profile: str,
           redact: bool = False) -> bytes:
    """The bytes of one credential output, from its value: a role's document, or the listing."""
    picked, document = pick_role(value, role)
    credentials = parse_document(picked, document)
    if redact:
        credentials = credentials.redacted()
    if fmt == "process":
        return render_process(credentials)
    if fmt == "credentials-file":
        return render_shared(credentials, profile)
    raise CredentialProblem(f"unknown credentials format {fmt!r}")
