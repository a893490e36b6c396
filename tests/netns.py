"""Hosts for tests that cross a network: Linux network namespaces (`ip netns`, as root), each with
an address of its own on one bridged subnet (veth pairs into a bridge here), and relays on this
side so that processes inside reach the database and Redis this machine runs on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from tests.tcp_gate import TcpGate


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def available() -> str:
    """Why namespaces cannot be made here ('' when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is missing"
    return ""


@dataclass
class Host:
    index: int
    namespace: str
    address: str  # inside the namespace
    gateway: str  # this side of the veth pair
    interface: str  # the namespace's end of the pair (where gloo talks to the other hosts)
    relays: list[TcpGate] = field(default_factory=list)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def reachable(self, url: str) -> str:
        """The URL rewritten so that it reaches a loopback service from inside the namespace."""
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            return url
        relay = TcpGate(parts.hostname, parts.port or {"postgres": 5432, "redis": 6379}[parts.scheme], self.gateway)
        self.relays.append(relay)
        auth = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{auth}{self.gateway}:{relay.port}"))


@dataclass
class Network:
    """A bridge on this side joining the hosts, as a switch joins machines of one subnet: they
    reach each other directly, and this namespace (the web process, the relays) at `gateway`."""

    bridge: str
    gateway: str = "10.77.0.1"


def make_network() -> Network:
    network = Network(f"mb{os.getpid() % 100000}")
    _ip("link", "add", "name", network.bridge, "type", "bridge")
    _ip("addr", "add", f"{network.gateway}/24", "dev", network.bridge)
    _ip("link", "set", network.bridge, "up")
    return network


def make_host(network: Network, index: int) -> Host:
    tag = f"m{os.getpid() % 100000}h{index}"
    namespace, outside, inside = f"maas-{tag}", f"{tag}o", f"{tag}i"
    host = Host(index, namespace, f"10.77.0.{index + 1}", network.gateway, inside)
    _ip("netns", "add", namespace)
    _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
    _ip("link", "set", inside, "netns", namespace)
    _ip("link", "set", outside, "master", network.bridge)
    _ip("link", "set", outside, "up")
    _ip("netns", "exec", namespace, "ip", "addr", "add", f"{host.address}/24", "dev", inside)
    _ip("netns", "exec", namespace, "ip", "link", "set", inside, "up")
    _ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
    _ip("netns", "exec", namespace, "ip", "route", "add", "default", "via", network.gateway)
    return host


def remove(host: Host) -> None:
    for relay in host.relays:
        relay.shut()
    subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)  # its veth end goes with it


def remove_network(network: Network) -> None:
    subprocess.run(["ip", "link", "del", network.bridge], capture_output=True)
