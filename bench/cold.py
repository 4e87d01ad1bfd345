"""Cold starts, on Python 3.9 (AL2023 pins) and 3.13 side by side, in one run:

- scripts: one `cc-imds get` against a bare interpreter and the curl pair (token PUT + GET);
  ten values in one `cc-imds get --shell` against bash + curl reading them with one token;
- peers: cold `cc-imds apply` of the grid's 25-value workload against the peer Python
  clients fetching the same values (ec2-metadata on 3.13 only: it needs 3.10+; botocore);
- imports: what each command imports (`-X importtime`), beyond a bare interpreter.

cc-imds runs as installed: a byte-compiled copy of the package, started by its own script
(bin/cc-imds) as pip and as the RPM install it. Every contender's output is compared with
cc-imds's on every run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
TEN = [f"V{i:03d}=meta-data/bench/v{i:03d}" for i in range(10)]
COMMANDS = {
    "get (1 value)": ["get", "meta-data/instance-id"],
    "get --shell (10 values)": ["get", "--shell", *TEN],
    "validate": ["validate", "DECL"],
    "plan": ["plan", "DECL", "--no-conf-dir"],
    "apply": ["apply", "DECL", "--no-conf-dir"],
    "apply (validated before)": ["apply", "DECL", "--no-conf-dir"],
    "scan": ["scan", str(REPO / "tests/fixtures/scan/classic-v1.sh")],
    "scan --suggest": ["scan", "--suggest", str(REPO / "tests/fixtures/scan/classic-v1.sh")],
    "enable-module --print": ["enable-module", "--print", "--root", "ROOT"],
    "emulate --help": ["emulate", "--help"],
}


def install(work: Path, pythons: Dict[str, Path]) -> Tuple[Path, Dict[str, Path]]:
    """A byte-compiled copy of cc_imds (schemas inside, as in the wheel) and, per Python, the
    `cc-imds` script (bin/cc-imds) as pip installs it (its first line pointed at the interpreter)
    and as the RPM does (`-s` added by %py3_shebang_fix). Returns the copy's directory (for
    PYTHONPATH) and the scripts."""
    site = work / "site"
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(REPO / "cc_imds", site / "cc_imds", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "schemas", site / "cc_imds/schemas")
    body = (REPO / "bin/cc-imds").read_text().split("\n", 1)[1]
    scripts = {}
    for label, python in pythons.items():
        subprocess.run([str(python), "-m", "compileall", "-q", str(site)], check=True)
        for key, shebang in ((label, f"#!{python}"), (f"rpm {label}", f"#!{python} -s")):
            script = work / f"cc-imds-{key.replace(' ', '-')}"
            script.write_text(f"{shebang}\n{body}")
            script.chmod(0o755)
            scripts[key] = script
    return site, scripts


def wall(command: List[str], env: Dict[str, str]) -> Tuple[float, bytes]:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed ({result.returncode}): {result.stderr.decode()}")
    return elapsed, result.stdout


def scripts(url: str, pythons: Dict[str, Path], tools: Dict[str, Path], env: Dict[str, str],
            runs: int) -> Dict[str, Any]:
    """Interleaved runs of every contender; returns their wall times in seconds."""
    curl_pair = (f'T=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" {url}/latest/api/token) && '
                 f'curl -sf -H "X-aws-ec2-metadata-token: $T" {url}/latest/meta-data/instance-id')
    contenders: Dict[str, Tuple[List[str], str]] = {
        "curl pair": (["sh", "-c", curl_pair], "one"),
        "bash + curl, 10 values": (["bash", str(REPO / "bench/curl-values.sh"), url, *TEN], "ten"),
    }
    for label, python in pythons.items():
        contenders[f"python {label} -c pass"] = ([str(python), "-c", "pass"], "")
        contenders[f"python {label}: import http.client"] = ([str(python), "-c", "import http.client"], "")
        # The script pip writes for a console_scripts entry point imports `re` first (why cc-imds
        # installs its own): what that would put under every command.
        contenders[f"python {label}: import re"] = ([str(python), "-c", "import re"], "")
        contenders[f"get {label}"] = ([str(tools[label]), "get", "meta-data/instance-id", "--endpoint", url], "one")
        contenders[f"get {label}, RPM"] = (
            [str(tools[f"rpm {label}"]), "get", "meta-data/instance-id", "--endpoint", url], "one")
        contenders[f"get --shell {label}, 10 values"] = (
            [str(tools[label]), "get", "--shell", *TEN, "--endpoint", url], "ten")
        contenders[f"get --shell {label}, 10 values, RPM"] = (
            [str(tools[f"rpm {label}"]), "get", "--shell", *TEN, "--endpoint", url], "ten")
    times: Dict[str, List[float]] = {name: [] for name in contenders}
    expected: Dict[str, bytes] = {}
    for _ in range(runs):
        for name, (command, output) in contenders.items():
            seconds, printed = wall(command, env)
            times[name].append(seconds)
            if output:
                if expected.setdefault(output, printed) != printed:
                    raise SystemExit(f"{name} printed {printed!r}, not {expected[output]!r}")
    return {"times": times, "runs": runs}


def peers(url: str, pythons: Dict[str, Path], tools: Dict[str, Path], env: Dict[str, str], work: Path,
          runs: int, declaration: Any) -> Dict[str, Any]:
    """Cold apply of the 25-value workload, first and unchanged declaration, against the peers."""
    import json

    out = work / "peers-out"
    decl = work / "peers.yaml"
    decl.write_text(json.dumps({"imds": declaration(25, out, url)}))
    contenders: Dict[str, List[str]] = {}
    for label, python in pythons.items():
        contenders[f"apply {label}, new declaration"] = [str(tools[label]), "apply", str(decl), "--no-conf-dir"]
        contenders[f"apply {label}, validated declaration"] = [str(tools[label]), "apply", str(decl), "--no-conf-dir"]
        contenders[f"botocore IMDSFetcher {label}"] = [str(python), str(REPO / "bench/contender_f.py"), url, "25",
                                                       str(out)]
        if label != "3.9":
            contenders[f"ec2-metadata {label}"] = [str(python), str(REPO / "bench/contender_e.py"), url, "25",
                                                   str(out)]
    times: Dict[str, List[float]] = {name: [] for name in contenders}
    reference = None
    for _ in range(runs):
        for name, command in contenders.items():
            if "new declaration" in name:
                forget_validations(env)
            shutil.rmtree(out, ignore_errors=True)
            seconds, _ = wall(command, env)
            times[name].append(seconds)
            files = ((out / "bench.sh").read_bytes(), (out / "bench.conf").read_bytes())
            if reference is None:
                reference = files
            elif files != reference:
                raise SystemExit(f"{name} wrote different files than cc-imds apply")
    return {"times": times, "runs": runs}


def forget_validations(env: Dict[str, str]) -> None:
    """Start a `new declaration` run without what an earlier apply remembered about it."""
    cache = env.get("CC_IMDS_CACHE_DIR")
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


def import_costs(url: str, pythons: Dict[str, Path], tools: Dict[str, Path], env: Dict[str, str], work: Path,
                 runs: int, declaration: Any) -> Dict[str, Any]:
    """Milliseconds of imports per command beyond a bare interpreter's (-X importtime, self times
    summed, the least of runs: the same work each time, so anything above it is the machine's
    other load), and the third-party packages each command loaded."""
    import json

    decl = work / "imports.yaml"
    decl.write_text(json.dumps({"imds": declaration(25, work / "imports-out", url)}))
    root = work / "enable-root"
    (root / "etc/cloud").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "tests/fixtures/al2023-like-cloud.cfg", root / "etc/cloud/cloud.cfg")
    found: Dict[str, Any] = {}
    for label, python in pythons.items():
        site_packages = {p.name.split(".")[0].split("-")[0].lower() for p in
                         Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                              "['purelib'])"], capture_output=True, text=True,
                                             check=True).stdout.strip()).iterdir()}
        bare = min(_importtime([str(python), "-c", "pass"], env)[0] for _ in range(runs))
        rows = {}
        for name, args in COMMANDS.items():
            args = [{"DECL": str(decl), "ROOT": str(root)}.get(a, a) for a in args]
            if args[0] in ("get", "plan", "apply"):
                args += ["--endpoint", url]
            remembered = "validated before" in name
            if remembered:
                _importtime([str(python), str(tools[label]), *args], env)  # validates, and remembers
            samples = []
            modules: List[str] = []
            for _ in range(runs):
                if not remembered:
                    forget_validations(env)
                total, modules = _importtime([str(python), "-X", "importtime", str(tools[label]), *args], env)
                samples.append(total)
            third = sorted({m.split(".")[0] for m in modules} & site_packages - {"cc_imds"})
            rows[name] = {"ms": min(samples) - bare, "third_party": third}
        found[label] = {"bare_ms": bare, "commands": rows}
    return found


def _importtime(command: List[str], env: Dict[str, str]) -> Tuple[float, List[str]]:
    if "-X" not in command:
        command = [command[0], "-X", "importtime", *command[1:]]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"{command} failed: {result.stderr[-2000:]}")
    total = 0
    modules = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and not line.endswith("| package"):
            self_us, _, name = line[len("import time:"):].split("|")
            if self_us.strip().isdigit():
                total += int(self_us)
                modules.append(name.strip())
    return total / 1000, modules
