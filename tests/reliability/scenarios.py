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
    "bind-mounted-target": "An output is a bind mount (renaming gives EBUSY): refused while staging, files untouched",
    "immutable-target": "An output is immutable (chattr +i): refused while staging, files untouched",
    "commit-rename-fails": "Each rename of the commit fails in turn (strace, EBUSY): earlier outputs put back exactly",
    "commit-fsync-fails": "Each fsync fails in turn (strace, EIO), the directory's last: outputs put back exactly",
    "rollback-fails": "Renames fail from the 2nd on, rollback too: error says which file is new, where the old is kept",
    "write-step-errors":
        "mkdir, fchmod, fsync, link, rename fail (EROFS, EACCES, EDQUOT, ENOSPC, EIO): named, no change",
    "root-escape": "Absolute and ../ symlinks inside --root: resolved inside it, nothing written outside",
    "symlink-loop": "A symlink loop inside --root: an error naming it, nothing written",
    "lock-squatted": "Another user creates and holds the old /run/lock/cc-imds.lock: ignored, outputs correct",
    "lock-held": "The lock is held past the 2 s deadline: error naming the lock and its holder, files untouched",
    "dropin-untrusted-file": "Drop-ins owned by another user, or group-writable: refused by name, nothing written",
    "dropin-untrusted-dir": "A drop-in directory others can write: refused, nothing written",
    "dropin-oversized": "An 8 MiB drop-in: refused by name at the 1 MiB limit, nothing written",
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
    # hostile servers (tests/reliability/test_hostile_server.py): every byte bounded by the deadline
    "slow-token-put": "Token PUT answered with a status line and headers one byte per 250 ms: `get` and `apply` "
                      "end within the 2 s deadline plus slack, files untouched",
    "trickled-headers": "GET response headers one byte per 250 ms: ends within the deadline plus slack",
    "trickled-chunk-size": "A chunked GET response whose chunk-size line never ends: ends within the deadline plus "
                           "slack",
    "trickled-trailers": "A chunked GET response whose trailers trickle: ends within the deadline plus slack",
    "endless-100-continue": "`100 Continue` answers forever: ends within the deadline plus slack",
    "trickled-hop-limit-probe": "Token PUT unanswered and the probing GET trickles its headers: ends within the "
                                "deadline plus slack",
    "malformed-response": "GET answered with broken framing (Content-Length and chunked, two lengths, a folded "
                          "header, a signed chunk size): a one-line protocol error naming the path, not retried, "
                          "files untouched",
    # retry and token discipline (tests/reliability/test_hostile_server.py)
    "retry-after-zero": "503 forever with Retry-After: 0, 2 s deadline: retries paced by the backoff (at most 6 "
                        "attempts), error, files untouched",
    "retry-after-past": "503 forever with a Retry-After date in the past: paced the same, error, files untouched",
    "ttl-zero-echo": "Token PUT answered with a TTL echo of 0: one PUT for the whole run, outputs correct",
    "token-churn-concurrency": "Every token revoked after each 2 GETs, concurrency 8: retried with the newest token, "
                               "at most one PUT per revocation, outputs correct",
    "crlf-token": "A token containing CR/LF: a one-line error that does not repeat it, no GET, files untouched",
    "metadata-disabled-env": "AWS_EC2_METADATA_DISABLED=true: a clear error, no request sent, files untouched",
    "bad-connection-settings": "An unparsable endpoint in the environment, or `timeout: .nan`: a one-line error "
                               "naming the setting, exit 1, no request",
    "get-all-or-nothing": "get --shell with three of four values failing: all three named, no value printed",
    "get-one-token": "get --json of six values: one process, 1 PUT and one GET per value",
    "get-url-forms": "get with dated-version, :80 and IPv6 URLs, and foreign hosts: the right path, or exit 2 at once",
    "watch-imds-outage": "cc-imds watch, IMDS down for several polls: files byte-identical (no `default` used), "
    "status exits 3, recovers by itself",
    "watch-credentials-expire-while-down": "cc-imds watch, IMDS down until credentials expire: status exits 6, "
    "then 0 once fresh ones are written",
    "watch-sigterm-mid-write": "cc-imds watch, SIGTERM while 30 outputs are staged: no temp file, all old or all new",
    "watch-invalid-reload": "cc-imds watch, SIGHUP with an invalid declaration: every problem logged, the running one "
    "kept, status exits 1",
    "watch-unrepresentable-value": "cc-imds watch, a new tag value the systemd format cannot carry: that file kept, "
    "the others written, status exits 4, recovers",
    "watch-notice-flood": "cc-imds watch, 25 maintenance notices at once: 10 per poll, each command run once",
    "watch-hostile-expiration": "cc-imds watch, credentials whose Expiration an offset pushes past 9999 or before "
    "year 1: written, the watcher keeps running, status exits 0",
    "watch-sigterm-mid-poll": "cc-imds watch, SIGTERM while IMDS never answers or trickles its headers: stopped "
    "within one attempt's timeout (1 s) plus slack, not the poll's 10 s deadline",
    "watch-secret-in-error": "cc-imds watch, template errors quoting sensitive values the renderer takes for Jinja's "
    "words ('None', '... object'): redacted in the log, status.json and status, as apply does",
    "watch-reload-unusable-endpoint": "cc-imds watch, SIGHUP with an endpoint whose port is out of range: refused, "
    "the running declaration kept, status exits 1",
    "watch-notice-overflow": "cc-imds watch, 120 maintenance notices listed at once (more than the 100 remembered): "
    "the first 50 acted on, each command run once",
    "watch-sigterm-waiting-for-lock": "cc-imds watch, SIGTERM while it waits for the lock apply holds: stopped within "
    "1 s plus slack (not the poll's 10 s deadline), file untouched, no error logged",
}
SCENARIOS.update({
    "yaml-alias-bomb": "A 342-byte YAML alias bomb (9**9 nodes) as a drop-in: refused at once, naming file, line and "
                       "the node budget; files untouched",
    "yaml-deep-nesting": "A declaration nested 20,000 levels deep: refused naming the 64-level limit, no recursion "
                         "error; files untouched",
    "yaml-boolean-keys": "Unquoted `ON:` and `NO:` keys (YAML 1.1 booleans): each reported with its location",
    "non-finite-settings": "`deadline: .nan`, `timeout: .inf`, `concurrency: -1`, `token_ttl: 0`: each refused, "
                           "naming the key; files untouched",
    "oversized-declaration": "A 1 GiB declaration file (sparse) for validate and apply: refused by its size before a "
                             "byte is read",
    "special-files": "A FIFO and /dev/zero as declaration, drop-in, metadata tree, cloud.cfg and scanned file: "
                     "refused at once, never blocks",
    "scan-gzip-bomb": "`scan` of 1 MB of gzip that inflates to 1 GiB: refused at the 16 MiB budget, memory bounded",
    "corrupt-inputs": "Corrupt gzip, `write_files: 5`, malformed metadata trees and cloud.cfg: one line each, "
                      "documented exit codes, nothing written",
    "stdout-full": "Standard output on a full device (/dev/full) for every command that prints: exit 4, one line",
})
SCENARIOS.update({
    # outside input at the edges, round 3 (tests/reliability/test_outside_input.py)
    "deep-json-imds": "IMDS documents nested 5,000 deep (arrays, objects, mixed, under a key, unclosed) for "
                      "`get --key`, `plan`, `apply`: exit 3 naming the path and the 64-level limit, files untouched",
    "deep-json-files": "Metadata trees and status files nested 5,000 deep: one line naming the file and the limit",
    "deep-json-watch": "cc-imds watch, a `key:` value and spot and maintenance notices nested 5,000 deep: logged, "
                       "status exits 3, every other value and event served, recovers",
    "watch-command-flood": "cc-imds watch, ten new notices a second of two events, commands sleeping 40 s: at most 4 "
                           "commands at once, threads bounded, the rest waiting or deferred, shown in status",
    "watch-command-leftovers": "cc-imds watch, on_change commands leaving background processes (one ignoring "
                               "SIGTERM): ended when the command exits",
    "numbers-at-the-edge": "Every numeric option of every command with 0, -1, 1e10, 1e300, 99999999999, inf, nan, a "
                           "400-digit integer: exit 2 naming the bound, `get`'s own parser as argparse's",
    "numbers-in-declarations": "Every numeric declaration key with 0, -1, 1e10, 1e300, 10**30, inf, nan: exit 1 "
                               "naming the key",
    "early-reader-exit": "`get` of 3 MB (raw, --lines) and 100 KB (--shell, --json) into a reader that leaves after 0 "
                         "to 1,000,000 bytes: exit 4, one line",
    "control-chars-in-logs": "cc-imds watch, notices carrying ESC, BEL, CSI, CR/LF and a bidi override: escaped in "
                             "the log and in `status`",
    "emulator-control-poisoning": "Deep, malformed and misplaced bodies to the emulator's control calls: 400 each, "
                                  "nothing changed; deep documents set directly: IMDS keeps serving",
    "keepalive-surplus-at-once": "A body longer than its Content-Length, the surplus a whole fake answer in the same "
                                 "packet: never read as another answer, no connection reused after",
    "keepalive-surplus-late": "The same surplus arriving 50 ms later: found before the next request, never read as "
                              "its answer, no connection reused after",
})
