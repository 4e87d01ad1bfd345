"""What the box boots: instances (chains of boots on one disk) and what IMDS serves each boot.

A chain is one instance: one disk, one instance id, booted one or more times in order
(a stop/start is the next boot of the chain). Each boot says what the emulator in the
guest serves and how (addresses, an outage), which files the guest reports on, and which
commands run once cloud-init is done (`after_boot`: the place for scenarios that act on
the running system, such as a tag edited while the instance runs).

To add a scenario, add a chain or a boot here and tests that ask for it with
`@pytest.mark.boots("chain/boot")`; the harness boots only what the selected tests need.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from cc_imds.imds.tree import default_tree_path
from cc_imds.watch.schedule import CREDENTIAL_WINDOW

IPV4 = "169.254.169.254"
IPV6 = "fd00:ec2::254"

# Tag values are written by whoever may tag the instance: this one must reach the shell,
# systemd and the template exactly as it is, and run nothing.
TEAM = """Platform & SRE's "core" $HOME `id` \\ 100%"""

# User-data as a user would give it at launch: an `imds:` declaration, a drop-in that
# `write_files` delivers, and runcmd using the outputs. No endpoint anywhere. The Name tag is
# refreshed after boot into a file of its own, with an on_change, and a spot interruption
# runs a command: so the boot run leaves the marker that starts `cc-imds watch`. The role's
# credentials go to a service as docs/credentials.md's systemd recipe hands them over
# (box-agent.service reads them with LoadCredential=; on_change restarts it), and the
# watcher's metrics go where Debian's node_exporter reads text files.
USER_DATA = """\
#cloud-config
imds:
  values:
    instance_id: meta-data/instance-id
    region: {path: dynamic/instance-identity/document, key: region}
    team: meta-data/tags/instance/Team
    tags: meta-data/tags/instance/
    name: {path: meta-data/tags/instance/Name, refresh: 3}
  env:
    - path: /etc/box-app/name.env
      format: systemd
      vars: {NAME: name}
      on_change: [/usr/local/lib/box/record.py, on-change]
    - path: /etc/cc-imds/instance.env
      format: systemd
      vars: {INSTANCE_ID: instance_id, AWS_REGION: region, TEAM: team}
    - path: /etc/cc-imds/tags.sh
      format: shell
      vars: {INSTANCE_ID: instance_id}
      expand: {tags: TAG_}
  files:
    - path: /etc/box-app/app.conf
      permissions: "0640"
      content: |
        name = {{ tags.Name }}
        region = {{ region }}
  events:
    - event: spot-interruption
      run: [/usr/local/lib/box/record.py, spot-interruption]
    - event: lifecycle
      states: ["Warmed:*"]
      run: [/usr/local/lib/box/record.py, lifecycle-warm]
    - event: lifecycle
      states: [InService]
      run: [/usr/local/lib/box/record.py, lifecycle-in-service]
  credentials:
    - path: /run/aws-credentials/box-agent
      format: credentials-file
      on_change: [systemctl, try-restart, box-agent.service]
  metrics:
    path: /var/lib/prometheus/node-exporter/cc_imds.prom
write_files:
  - path: /etc/cc-imds/conf.d/60-app.yaml
    permissions: "0644"
    content: |
      values:
        az: meta-data/placement/availability-zone
        access_key: {path: meta-data/iam/security-credentials/app-server, key: AccessKeyId}
      env:
        - path: /etc/box-app/placement.env
          format: dotenv
          vars: {AZ: az}
        - path: /etc/box-app/credentials.json
          format: json
          vars: {AWS_ACCESS_KEY_ID: access_key}
runcmd:
  - [sh, -c, '. /etc/cc-imds/tags.sh && env | grep -E "^(INSTANCE_ID|TAG_)" | sort > /var/lib/box/runcmd.env']
"""

# The role's credentials, as EC2 serves them: issued for six hours. (The emulator's bundled
# tree has fixed dates, long past when the box runs; the watcher would rightly call a file
# holding them expired.) Issued when the session starts, so every boot serves the same.
ROLE_CREDENTIALS = "meta-data/iam/security-credentials/app-server"
ISSUED = int(time.time()) // 3600 * 3600
LIFETIME = 6 * 3600

# Outputs, by whom they are written, and their modes.
INSTANCE_ENV = "/etc/cc-imds/instance.env"
TAGS_SH = "/etc/cc-imds/tags.sh"
APP_CONF = "/etc/box-app/app.conf"
PLACEMENT_ENV = "/etc/box-app/placement.env"
CREDENTIALS = "/etc/box-app/credentials.json"
NAME_ENV = "/etc/box-app/name.env"  # the one the watcher keeps current
# box-agent.service's LoadCredential= source. The emulator's keys are made up: the results
# hold the file's content (as they hold every inspected file's) for the tests to compare.
AGENT_CREDENTIALS = "/run/aws-credentials/box-agent"
OUTPUTS = {
    INSTANCE_ENV: "0o644", TAGS_SH: "0o644", APP_CONF: "0o640", PLACEMENT_ENV: "0o644", CREDENTIALS: "0o600",
    NAME_ENV: "0o644", AGENT_CREDENTIALS: "0o600",
}
AGENT_UNIT = "box-agent.service"
AGENT_READS = "/run/box-agent.jsonl"  # one line per start of box-agent.service (guest/agent.py)
METRICS = "/var/lib/prometheus/node-exporter/cc_imds.prom"  # Debian's node_exporter's textfile directory
DROPIN = "/etc/cc-imds/conf.d/60-app.yaml"
RUNCMD_ENV = "/var/lib/box/runcmd.env"
MODULE_DROPIN = "/etc/cloud/cloud.cfg.d/zz-cc-imds.cfg"
WATCH_MARKER = "/run/cc-imds/watch"  # left by the boot run when a watcher is needed
LIFECYCLE_MEMORY = "/var/lib/cc-imds/lifecycle.json"  # the lifecycle state acted on: it outlives a reboot
INSPECT = (*OUTPUTS, DROPIN, RUNCMD_ENV, MODULE_DROPIN, WATCH_MARKER, LIFECYCLE_MEMORY, AGENT_READS, METRICS)
LIFECYCLE_PATH = "meta-data/autoscaling/target-lifecycle-state"


# The after-boot commands the tests look for by name.
GET_NAME = "cc-imds get meta-data/tags/instance/Name"
STATUS = "cc-imds status"
STATUS_JSON = "cc-imds status --json"
STOP_WATCHER = "systemctl stop cc-imds-watch.path cc-imds-watch.service"
WAIT_WARM = f"/usr/local/lib/box/record.py wait lifecycle-warm 1 {LIFECYCLE_PATH} 2"
WAIT_IN_SERVICE = f"/usr/local/lib/box/record.py wait lifecycle-in-service 1 {LIFECYCLE_PATH} 2"
ROTATE = "/usr/local/lib/box/imds_box.py rotate"
WAIT_AGENT = f"/usr/local/lib/box/record.py wait-lines {AGENT_READS} 2"
# The agent's second start is written while `systemctl try-restart` still runs: then wait
# for the watcher to record how the on_change ended (status and metrics are written then).
WAIT_AGENT_RESTARTED = f"/usr/local/lib/box/record.py wait-on-change {AGENT_CREDENTIALS}"
# What node_exporter serves, as Prometheus scrapes it.
SCRAPE = "/usr/local/lib/box/scrape.py http://127.0.0.1:9100/metrics"
# Hidden files where the watcher writes: its temp files (outputs, status, metrics) are named so.
LEFTOVERS = "find /etc/box-app /etc/cc-imds /run/cc-imds /run/aws-credentials /var/lib/prometheus -name '.*'"


@dataclass(frozen=True)
class Boot:
    name: str
    listen: Tuple[str, ...] = (IPV4,)
    tags: Dict[str, Optional[str]] = field(default_factory=dict)  # changes from the chain's tags (None: removed)
    outage: Optional[float] = None  # seconds IMDS stays down once cc-imds first tries (see imds_box.py)
    after_boot: Tuple[str, ...] = ()
    lifecycle: Optional[str] = None  # the Auto Scaling lifecycle state served this boot (None: a 404)
    # Seconds after the boot starts that the role's credentials (the same keys) expire: the
    # instance runs late in their life, so the watcher asks IMDS for new ones every minute.
    # (See credential_lifetime_problems.)
    credentials_expire_in: Optional[int] = None


@dataclass(frozen=True)
class Chain:
    name: str
    instance_id: str
    uuid: str  # the VM's DMI uuid and serial; `ec2` first, as on EC2
    boots: Tuple[Boot, ...]

    def boot(self, name: str) -> Boot:
        for boot in self.boots:
            if boot.name == name:
                return boot
        raise KeyError(f"chain {self.name} has no boot {name!r}")

    def tags(self, upto: str) -> Dict[str, str]:
        """The instance's tags as of boot `upto`: each boot's changes, applied in order."""
        tags = base_tags()
        for boot in self.boots:
            for key, value in boot.tags.items():
                if value is None:
                    tags.pop(key, None)
                else:
                    tags[key] = value
            if boot.name == upto:
                return tags
        raise KeyError(upto)

    def tree(self, upto: str) -> Dict[str, Any]:
        tree = {k: v for k, v in _default_tree().items() if not k.startswith("meta-data/tags/instance/")}
        tree["meta-data/instance-id"] = self.instance_id
        document = dict(tree["dynamic/instance-identity/document"])
        document["instanceId"] = self.instance_id
        tree["dynamic/instance-identity/document"] = document
        tree["user-data"] = USER_DATA
        tree[ROLE_CREDENTIALS] = {**tree[ROLE_CREDENTIALS], "LastUpdated": _iso(ISSUED),
                                  "Expiration": _iso(ISSUED + LIFETIME)}
        for key, value in self.tags(upto).items():
            tree[f"meta-data/tags/instance/{key}"] = value
        lifecycle = self.boot(upto).lifecycle
        if lifecycle is not None:
            tree[LIFECYCLE_PATH] = lifecycle
        return tree

    def boot_config(self, name: str) -> Dict[str, Any]:
        """/etc/box/boot.json for a boot, written just before it starts: read by the guest's
        emulator and collector."""
        boot = self.boot(name)
        tree = self.tree(name)
        if boot.credentials_expire_in is not None:
            expires = int(time.time()) + boot.credentials_expire_in
            tree[ROLE_CREDENTIALS] = {**tree[ROLE_CREDENTIALS], "LastUpdated": _iso(expires - LIFETIME),
                                      "Expiration": _iso(expires)}
        return {
            "name": boot.name,
            "tree": tree,
            "listen": list(boot.listen),
            "outage": boot.outage,
            "after_boot": list(boot.after_boot),
            "inspect": list(INSPECT),
        }


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _default_tree() -> Dict[str, Any]:
    return dict(json.loads(default_tree_path().read_text()))


def base_tags() -> Dict[str, str]:
    tags = {k.rsplit("/", 1)[1]: v for k, v in _default_tree().items() if k.startswith("meta-data/tags/instance/")}
    tags["Team"] = TEAM
    return tags


# Every boot of the box costs about 100 s of CPU under emulation, and CI has two cores: the
# scenarios share boots where they can. The first boot is the plain one (and gives the
# figures in docs/compatibility.md); the second combines five changes, each checked by its own tests.
CHAINS = {
    chain.name: chain
    for chain in (
        Chain(
            "stop-start",
            instance_id="i-0b0c5e1f7a2d3e4f5",
            uuid="ec2b0c5e-1f7a-2d3e-4f50-0123456789ab",
            boots=(
                # Launch into a warm pool (Warmed:Running), IMDS on IPv4, as EC2 serves it by
                # default: the watcher runs the Warmed:* lifecycle command once.
                Boot("first", lifecycle="Warmed:Running", after_boot=(WAIT_WARM,)),
                # Stopped, the Name tag edited, started again: IMDS now answers on IPv6
                # alone (as in an IPv6-only subnet), and only some seconds after cc-imds
                # first tries, as if the network came up late.
                # Once up, a script reads a tag with `cc-imds get`; the tag is edited while
                # the instance runs, and read again. The watcher rewrites the file the tag
                # feeds and runs its on_change once (two more polls show it is not run
                # again); then a spot notice runs its command once. `cc-imds status`, then
                # the watcher is stopped and nothing it wrote is left half-done.
                # Auto Scaling moved it into service while it was stopped: the InService
                # lifecycle command runs once, with the state acted on at the first boot
                # (remembered on disk, where /run is not) as the previous one.
                # The role's keys are late in their life (they expire 25 minutes into the
                # boot, longer than a boot may take): after the spot notice, IMDS rotates
                # them; the watcher rewrites the agent's credentials and restarts it, and
                # the agent reads the new keys through LoadCredential=. node_exporter is
                # scraped, as Prometheus would, before the watcher is stopped. (Five
                # changes in one boot, each checked by its own tests.)
                Boot(
                    "second",
                    listen=(IPV6,),
                    tags={"Name": "web-2"},
                    outage=8.0,
                    lifecycle="InService",
                    credentials_expire_in=25 * 60,
                    after_boot=(
                        WAIT_IN_SERVICE,
                        GET_NAME,
                        "/usr/local/lib/box/imds_box.py set meta-data/tags/instance/Name web-3",
                        GET_NAME,
                        "/usr/local/lib/box/record.py wait on-change 1 meta-data/tags/instance/Name 2",
                        "/usr/local/lib/box/imds_box.py spot terminate 120",
                        "/usr/local/lib/box/record.py wait spot-interruption 1 meta-data/spot/instance-action 2",
                        ROTATE,
                        WAIT_AGENT,
                        WAIT_AGENT_RESTARTED,
                        STATUS,
                        STATUS_JSON,
                        SCRAPE,
                        STOP_WATCHER,
                        LEFTOVERS,
                    ),
                ),
            ),
        ),
    )
}


def credential_lifetime_problems(boot_timeout: float) -> List[str]:
    """Credentials served close to their Expiration must outlive the longest a boot may take
    (or the watcher would rightly call them expired, whatever the product does), and be
    within twice the watcher's window, where it asks for new ones every minute (or it would
    not see the rotation for hours)."""
    problems = []
    for chain in CHAINS.values():
        for boot in chain.boots:
            lifetime = boot.credentials_expire_in
            if lifetime is not None and not boot_timeout < lifetime <= 2 * CREDENTIAL_WINDOW:
                problems.append(f"{chain.name}/{boot.name}: credentials_expire_in {lifetime} s must be more than the "
                                f"boot timeout ({boot_timeout:.0f} s) and at most {2 * CREDENTIAL_WINDOW:.0f} s")
    return problems


def boots_needed(wanted: List[Tuple[str, str]]) -> Dict[str, List[str]]:
    """For each chain with a wanted boot, its boots up to the last one wanted."""
    needed: Dict[str, List[str]] = {}
    for chain_name, boot_name in wanted:
        chain = CHAINS[chain_name]
        names = [b.name for b in chain.boots]
        upto = names.index(chain.boot(boot_name).name) + 1
        if len(needed.get(chain_name, [])) < upto:
            needed[chain_name] = names[:upto]
    return needed
