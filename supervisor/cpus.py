"""How many CPUs this process may really use: affinity, then the cgroup CPU quota.

In a container `os.cpu_count()` is the host's count; a pod limited to 2 CPUs on a 64-core node
that starts 64 workers thrashes. The quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`) caps it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota in CPUs (1.5 = one and a half), or None when there is none.

    The tightest quota from this process's own cgroup up to the root: in a container with its own
    cgroup namespace that is the root; on a host (a systemd unit's CPUQuota) it is the unit's
    cgroup, which /proc/self/cgroup names.
    """
    v2_path, v1_path = _own_cgroups(proc_cgroup)
    quotas = [q for d in _upwards(root, v2_path) if (q := _v2_quota(d / "cpu.max")) is not None]
    if not quotas:
        quotas = [q for d in _upwards(root / "cpu", v1_path) if (q := _v1_quota(d)) is not None]
    return min(quotas) if quotas else None


def _own_cgroups(proc_cgroup: Path) -> tuple[str, str]:
    """(cgroup v2 path, cgroup v1 cpu controller path) of this process, "/" when unknown."""
    v2 = v1 = "/"
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _upwards(root: Path, path: str) -> list[Path]:
    """root/a/b, root/a, root: the cgroup and its ancestors."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    return [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_quota(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]  # "max 100000" or "150000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota_us = int((directory / "cpu.cfs_quota_us").read_text())
        period_us = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
