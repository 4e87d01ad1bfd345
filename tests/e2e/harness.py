"""Run real cloud-init, unpacked from Debian's packages, without touching the host.

CLOUD_CFG points cloud-init at a config in a temp dir with every path relocated
there and the None datasource. CLOUD_CFG is read as one file, so the temp dir's
etc/cloud/cloud.cfg and cloud.cfg.d/ are first merged by cloud-init's own
`read_conf_with_confd`, exactly as cloud-init merges /etc/cloud at boot.

cloud-init 22.x's `init` and `modules` subcommands still write
/run/cloud-init/{status,result}.json links, and 22.2's write status.json under
/var/lib/cloud/data whatever cloud_dir says. So each run happens in a private mount
namespace: a tmpfs over /run, and the temp dir's cloud/ bound over /var/lib/cloud.
strace records every file a run changes, and `outside_writes` lists those outside the
temp dir (and those two mounts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from tests.conftest import HUNG_AFTER

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "cloud-init"
# Amazon Linux 2023's 22.2.2 (upstream's source, tests/vendor/cloud-init/) and Debian's
# two. CC_IMDS_CLOUDINIT_VERSIONS runs others by hand, laid out the same way under
# .cache/cloud-init/VERSION.
VERSIONS = tuple(os.environ.get("CC_IMDS_CLOUDINIT_VERSIONS", "22.2.2,22.4.2,25.1.4").split(","))
# The Pythons each version is run with, as where it is packaged: Amazon Linux 2023 runs 22.2.2
# on its Python 3.9 alone (with its library versions, as in the py39 environment); Debian 12 and
# 13 run theirs on 3.11 and 3.13, so they run on a current Python (the py313 environment), and
# the 3.9 run is AL2023's. (lowest, highest or None); a version run by hand runs anywhere.
PYTHONS = {"22.2.2": ((3, 9), (3, 9)), "22.4.2": ((3, 10), None), "25.1.4": ((3, 10), None)}

LOGGING = """[loggers]
keys=root,cloudinit
[handlers]
keys=fileHandler
[formatters]
keys=simpleFormatter
[logger_root]
level=DEBUG
handlers=fileHandler
[logger_cloudinit]
level=DEBUG
qualname=cloudinit
handlers=
propagate=1
[handler_fileHandler]
class=FileHandler
level=DEBUG
formatter=simpleFormatter
args=('{log}', 'a')
[formatter_simpleFormatter]
format=%(asctime)s - %(filename)s[%(levelname)s]: %(message)s
"""

_CHANGES = re.compile(
    r'^\d+\s+(open|openat|creat|mkdir|mkdirat|rename|renameat|renameat2|unlink|unlinkat|symlink|symlinkat|'
    r'chmod|fchmodat|chown|lchown|fchownat|link|linkat|truncate)\((.*)\)\s+=\s+(-?\d+)'
)
_PATH = re.compile(r'"((?:[^"\\]|\\.)*)"')


def unpacked(version: str) -> Optional[Path]:
    site = CACHE / version / "usr/lib/python3/dist-packages"
    return site if (CACHE / version / ".complete").exists() else None


def wrong_python(version: str) -> Optional[str]:
    """Why this interpreter does not run `version`, if it does not."""
    if version not in PYTHONS:
        return None
    (low, high), here = PYTHONS[version], sys.version_info[:2]
    if high == low and here != low:
        return f"cloud-init {version} runs only on Python {low[0]}.{low[1]}, as on Amazon Linux 2023"
    if here < low:
        return f"cloud-init {version} runs on Python {low[0]}.{low[1]} and later, as in Debian (3.9 is AL2023's)"
    return None


def shipped_config(version: str, dest: Path) -> Path:
    """The /etc/cloud a distribution ships with `version`, copied to dest/etc/cloud.

    Debian's packages carry theirs; for 22.2.2 it is upstream's template rendered for
    the `amazon` variant by upstream's own tool, the closest public stand-in for AL2023's.
    """
    etc = dest / "etc/cloud"
    src = CACHE / version / "src"
    if not src.is_dir():
        shutil.copytree(CACHE / version / "etc/cloud", etc)
        return etc
    (etc / "cloud.cfg.d").mkdir(parents=True)
    subprocess.run([sys.executable, str(src / "tools/render-cloudcfg"), "--variant", "amazon",
                    str(src / "config/cloud.cfg.tmpl"), str(etc / "cloud.cfg")],
                   check=True, capture_output=True, env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
                   timeout=HUNG_AFTER)
    return etc


def can_isolate() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("strace") is not None


class CloudInit:
    def __init__(self, version: str, tmp: Path) -> None:
        site = unpacked(version)
        assert site is not None, f"cloud-init {version} is not unpacked; run tests/e2e/fetch-cloud-init"
        self.version = version
        self.site = site
        self.tmp = tmp
        self.etc = tmp / "etc/cloud"
        self.etc.mkdir(parents=True)
        self.cloud_cfg = self.etc / "cloud.cfg"
        self.effective_cfg = tmp / "effective-cloud.cfg"
        self.log = tmp / "cloud-init.log"
        self.out = tmp / "out"
        self.conf_d = tmp / "conf.d"
        self.run_dir = tmp / "cc-imds-run"  # what the module leaves for cc-imds watch
        self._strace_logs: List[Path] = []

    def configure(self, config: Dict[str, Any], userdata: str = "") -> None:
        base: Dict[str, Any] = {
            "datasource_list": ["None"],
            "datasource": {"None": {"metadata": {"instance-id": "iid-cc-imds-e2e"}, "userdata_raw": userdata}},
            "system_info": {
                "distro": "debian",
                "paths": {
                    "cloud_dir": str(self.tmp / "cloud"),
                    "run_dir": str(self.tmp / "run"),
                    "docs_dir": str(self.tmp / "docs"),
                    "templates_dir": str(self.tmp / "templates"),
                },
            },
            "def_log_file": str(self.log),
            "log_cfgs": [LOGGING.format(log=self.log)],
            "network": {"config": "disabled"},
            # Only modules that stay inside the temp dir: never hostname, users, locale...
            "cloud_init_modules": ["write_files"],
            "cloud_config_modules": ["timezone", "runcmd"],
            "cloud_final_modules": ["scripts-user"],
        }
        base.update(config)
        self.cloud_cfg.write_text(yaml.safe_dump(base))

    def dropin(self, name: str, content: str) -> None:
        (self.etc / "cloud.cfg.d").mkdir(exist_ok=True)
        (self.etc / "cloud.cfg.d" / name).write_text(content)

    def python(self, code: str, *args: str) -> subprocess.CompletedProcess:
        """Run Python with this cloud-init importable (not isolated: for reading config only)."""
        env = {"PYTHONPATH": f"{REPO}{os.pathsep}{self.site}", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True,
                              timeout=HUNG_AFTER)

    def read_config(self, cloud_cfg: Path) -> Dict[str, Any]:
        """What cloud-init's own reader makes of cloud.cfg and its cloud.cfg.d/."""
        code = "import json, sys; from cloudinit import util; print(json.dumps(util.read_conf_with_confd(sys.argv[1])))"
        return dict(json.loads(self.python(code, str(cloud_cfg)).stdout))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        self.effective_cfg.write_text(yaml.safe_dump(self.read_config(self.cloud_cfg)))
        strace_log = self.tmp / f"strace-{len(self._strace_logs)}.log"
        cloud_dir = self.tmp / "cloud"
        cloud_dir.mkdir(exist_ok=True)
        self._strace_logs.append(strace_log)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CLOUD_CFG": str(self.effective_cfg),
            "PYTHONPATH": f"{REPO}{os.pathsep}{self.site}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "CC_IMDS_CONF_DIR": str(self.conf_d),
            "CC_IMDS_LOCK": str(self.tmp / "cc-imds.lock"),
            "CC_IMDS_RUN_DIR": str(self.run_dir),
            "LANG": "C.UTF-8",
        }
        command = [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs cc-imds-e2e /run && mount -t tmpfs cc-imds-e2e /var/lib && mkdir /var/lib/cloud && '
            'mount --bind "$0" /var/lib/cloud && log=$1 && shift && exec strace -f -qq -y -o "$log" "$@"',
            str(cloud_dir), str(strace_log), sys.executable, "-m", "cloudinit.cmd.main", *args,
        ]
        return subprocess.run(command, env=env, capture_output=True, cwd=self.tmp, timeout=300)

    def log_lines(self, level: str) -> List[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [line for line in text.splitlines() if f"[{level}]" in line or f"{level}:" in line]

    def status(self) -> Dict[str, Any]:
        return dict(json.loads((self.tmp / "cloud/data/status.json").read_text()))

    def outside_writes(self) -> List[str]:
        """Paths outside the temp dir that any run created, changed or removed."""
        allowed = (str(self.tmp), "/run/", "/var/lib/cloud/", "/dev/null", "/dev/tty")
        found = []
        for strace_log in self._strace_logs:
            for line in strace_log.read_text(errors="replace").splitlines():
                match = _CHANGES.match(line)
                if not match or int(match.group(3)) < 0:
                    continue
                call, arguments = match.group(1), match.group(2)
                if call in ("open", "openat") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", arguments):
                    continue
                # With -y, a directory fd prints as 5</its/path>: relative names resolve against it.
                base = re.match(r"^\d+<([^>]*)>", arguments)
                for path in _PATH.findall(arguments):
                    full = path if path.startswith("/") else f"{base.group(1) if base else self.tmp}/{path}"
                    if not full.startswith(allowed):
                        found.append(f"{call}: {full}")
        return found
