"""Two Linux network namespaces joined by a veth pair whose two directions are rate-limited with ``tc``.

The shaped-link benchmark puts the backbone service in one namespace and a site in the other:
traffic between them crosses only the veth pair, at the rate ``tc``'s token bucket (``tbf``)
allows each way. ``tbf`` limits bandwidth only; it adds no delay (``netem`` would, and the
machines anther is built on do not have it), so latency is accounted for by the round-time
model (:mod:`anther.bench.round_time`) instead. Needs root and Linux; :func:`why_not` says why
namespaces cannot be made here, and nothing is left behind: :class:`LinkPair` deletes both
namespaces (which deletes the veth pair) on the way out, however it is left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Self


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=30)


def why_not() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if not os.path.exists("/proc/self/ns/net"):
        return "not Linux (no network namespaces)"
    if os.geteuid() != 0:
        return "not root: network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2)"
    probe = f"anther-probe-{uuid.uuid4().hex[:6]}"
    made = _run("ip", "netns", "add", probe)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.stdout.strip()}"
    _run("ip", "netns", "delete", probe)
    return None


@dataclass
class LinkPair:
    """Namespaces ``server`` and ``site`` joined by a veth pair, ``server_ip`` and ``site_ip`` on it."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    server_ip: str = "10.77.0.1"
    site_ip: str = "10.77.0.2"

    @property
    def server(self) -> str:
        return f"anther-srv-{self.tag}"

    @property
    def site(self) -> str:
        return f"anther-site-{self.tag}"

    def _check(self, *cmd: str) -> None:
        done = _run(*cmd)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.stdout.strip()}")

    def __enter__(self) -> Self:
        try:
            for ns in (self.server, self.site):
                self._check("ip", "netns", "add", ns)
                self._check("ip", "-n", ns, "link", "set", "lo", "up")
            self._check("ip", "link", "add", f"vs{self.tag}", "netns", self.server, "type", "veth",
                        "peer", "name", f"vc{self.tag}", "netns", self.site)
            ends = ((self.server, f"vs{self.tag}", self.server_ip), (self.site, f"vc{self.tag}", self.site_ip))
            for ns, dev, ip in ends:
                self._check("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
                self._check("ip", "-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.server, self.site):
            _run("ip", "netns", "delete", ns)

    def shape(self, mbit: float) -> None:
        """Limit each direction to ``mbit`` Mbit/s: the site's uplink (its end's egress) and downlink
        (the server end's egress). Replaces an earlier limit."""
        burst = max(int(mbit * 1e6 / 8 / 250), 16_000)  # 4 ms of traffic, at least 16 kB
        for ns, dev in ((self.site, f"vc{self.tag}"), (self.server, f"vs{self.tag}")):
            self._check("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                        "rate", f"{mbit}mbit", "burst", str(burst), "latency", "1s")

    def prefix(self, ns: str) -> list[str]:
        """The command prefix that runs a program in namespace ``ns``."""
        return ["ip", "netns", "exec", ns]
