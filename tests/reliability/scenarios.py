"""The reliability scenarios: one id each, with what it checks. docs/RELIABILITY.md has a
row for every id (a test keeps them in step), with the figures a run recorded."""

SCENARIOS = {
    "late-start": "IMDS not listening for the first 5 s of a 60 s deadline: outputs correct",
    "never-answers": "Nothing listening, 2 s deadline: clear error within the deadline plus slack, files untouched",
    "black-hole": "Connections accepted but never answered, 2 s deadline: error within the deadline, files untouched",
    "burst-429": "A burst of 429 (no Retry-After): retried with backoff, outputs correct",
    "burst-503-retry-after": "A burst of 503 with Retry-After: 1: honoured, outputs correct",
    "revoked-mid-run": "Every token revoked after 3 GETs: exactly one extra PUT, outputs correct",
    "short-ttl": "Token TTL 1 s, 150 ms per request, one at a time: renewed before expiry (no 401), outputs correct",
    "hop-limit": "Token PUT response dropped: error names HttpPutResponseHopLimit, files untouched",
    "disabled": "Endpoint disabled (403): fails at once with the 403 message, files untouched",
    "v1-only-default": "IMDSv1-only server, default policy: clear error naming imdsv1: fallback, no GETs",
    "v1-only-fallback": "IMDSv1-only server with imdsv1: fallback: outputs correct, no token sent",
    "missing-values": "Two required values 404: both named in one error, files untouched",
    "tags-disabled": "Tags not in metadata (404 on tags/instance/): error hints at InstanceMetadataTags",
    "slow-body": "A body trickling one byte per 50 ms: bounded by the attempt timeout, error, files untouched",
    "reset-mid-body": "Connection reset halfway through the next 2 bodies: retried, outputs correct",
    "oversized-body": "A 5 MiB value: refused with the limit named, files untouched",
    "invalid-utf8": "A value that is not UTF-8: error naming the path, files untouched",
    "gzip-user-data": "gzip user-data: `get` returns it byte for byte; rendering it as text is a clear error",
    "concurrent-applies": "Two applies at once on the same outputs: both succeed, outputs consistent",
    "disk-full": "The filesystem fills mid-write (64 KiB tmpfs): error, old files intact, no temp files",
    "symlinked-parent": "An output's parent is a symlink owned by another user: refused, nothing written through it",
    "planted-symlinks": "Symlinks planted at the target and at a temp-like name: replaced, never followed",
    "hostile-values": "Hostile tag values: exact through shell (bash, dash) and json; systemd and dotenv refuse",
    "generated-declarations": "Generated invalid declarations: located errors, no traceback, nothing written",
    "sandbox-escape": "A template reaching for Python internals: refused, nothing written",
    "template-time": "Nested loops over range(100000), 3 s deadline: stopped at the deadline plus slack, files "
                     "untouched",
    "template-memory": "A 3 GB format width and a doubling string: stopped at the memory limit, files untouched",
    "template-output-size": "A template writing 100 MB: stopped at the output limit, files untouched",
    "template-constant-folding": "`10 ** (10 ** 10)` and a 3 GB center width: validation evaluates nothing",
    "secret-in-template-error": "Credentials used as a key, an attribute, sliced, reversed, quoted by Python, a "
                                "sensitive default: no form of any secret in apply or plan output",
    "secret-in-generated-templates": "Generated sensitive values in generated templates through plan, apply and "
                                     "handle: no form of any secret in any message",
    "env-string-too-long": "A 200 KB tag value for a shell file: refused naming the variable and Linux's limit",
    "assembled-refused-name": "Tags assembling GLIBC_TUNABLES, JAVA_TOOL_OPTIONS, http_proxy with a short prefix: "
                              "refused, files untouched",
}
