"""Refuse a onebox that cannot stand here, before anything changes.

    python -m runbook.onebox.preflight --range 198.18.0.0/15 --bridge igwob0 \
        --bridge-address 198.18.0.1/24 --node master1=198.18.0.10 ... \
        --pod-subnet 198.19.0.0/16 --service-subnet 198.18.16.0/20

Checks: root; the tools onebox runs; every address and subnet inside the range (the
benchmarking range, which nothing else on a machine uses); no address of the range on
an interface other than onebox's own bridge, and no route into it through another
interface (someone else uses it); the bridge's name free or onebox's bridge; the
node, pod and service subnets apart; this machine not forwarding packets (a node's
traffic must not leave the machine). Each refusal names the value and what is allowed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: Host tools onebox runs, and the Debian package that has each.
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "buildah": "buildah",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "ssh": "openssh-client",
    "go": "Go 1.24 or newer",
    "cc": "gcc",
}

Network = ipaddress.IPv4Network


def check_inside(name: str, value: str, allowed: Network) -> list[str]:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return [f"{name}={value!r} is not an IPv4 address or subnet"]
    if net.version != 4 or not net.subnet_of(allowed):  # type: ignore[arg-type]
        return [f"{name}={value} is outside {allowed}: onebox uses only that range"]
    return []


def check_apart(subnets: dict[str, str]) -> list[str]:
    nets = {k: ipaddress.ip_network(v, strict=False) for k, v in subnets.items()}
    names = sorted(nets)
    return [
        f"{a}={nets[a]} overlaps {b}={nets[b]}: they must be apart"
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if nets[a].overlaps(nets[b])
    ]


def check_addresses_free(
    interfaces: list[dict[str, object]], allowed: Network, bridge: str
) -> list[str]:
    """An address of the range on any interface but the bridge means another user."""
    problems = []
    for iface in interfaces:
        ifname = str(iface.get("ifname"))
        for info in iface.get("addr_info", []) or []:  # type: ignore[union-attr]
            if info.get("family") != "inet":
                continue
            addr = ipaddress.ip_address(info["local"])
            if addr in allowed and ifname != bridge:
                problems.append(
                    f"{addr} is on interface {ifname}: {allowed} is in use on this machine"
                )
    return problems


def check_routes_free(routes: list[dict[str, object]], allowed: Network, bridge: str) -> list[str]:
    problems = []
    for route in routes:
        dst = str(route.get("dst"))
        if dst in ("default", "None"):
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.overlaps(allowed) and route.get("dev") != bridge:
            problems.append(
                f"route {dst} via {route.get('dev')}: {allowed} is in use on this machine"
            )
    return problems


def check_bridge(links: list[dict[str, object]], bridge: str) -> list[str]:
    for link in links:
        if link.get("ifname") == bridge:
            kind = (link.get("linkinfo") or {}).get("info_kind")  # type: ignore[union-attr]
            if kind != "bridge":
                return [
                    f"bridge={bridge}: an interface of that name exists and is a {kind or 'device'}"
                ]
    return []


def ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--range", required=True, dest="allowed")
    parser.add_argument("--bridge", required=True)
    parser.add_argument("--bridge-address", required=True)
    parser.add_argument("--node", action="append", default=[], metavar="NAME=ADDRESS")
    parser.add_argument("--pod-subnet", required=True)
    parser.add_argument("--service-subnet", required=True)
    args = parser.parse_args(argv)

    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(
            f"running as uid {os.geteuid()}: onebox needs root (namespaces, mounts, nspawn)"
        )
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found: install {package}")
    try:
        allowed = ipaddress.ip_network(args.allowed)
    except ValueError:
        allowed = None
    if not isinstance(allowed, ipaddress.IPv4Network):
        # every other check is against the range: without one there is nothing to check
        print(f"onebox preflight: range={args.allowed!r}: must be an IPv4 range", file=sys.stderr)
        return 2
    nodes: dict[str, str] = {}
    for item in args.node:
        name, _, address = item.partition("=")
        if not name or not address:
            problems.append(f"node {item!r}: expected NAME=ADDRESS")
            continue
        nodes[name] = address
        problems += check_inside(f"node {name}", address, allowed)
    if len(set(nodes.values())) != len(nodes):
        problems.append(f"nodes {nodes}: two nodes share an address")
    subnets = {
        "bridge_address": args.bridge_address,
        "pod_subnet": args.pod_subnet,
        "service_subnet": args.service_subnet,
    }
    for name, value in subnets.items():
        problems += check_inside(name, value, allowed)
    if not problems:
        problems += check_apart(subnets)
        node_net = ipaddress.ip_network(args.bridge_address, strict=False)
        problems += [
            f"node {n}={a} is not on the bridge's subnet {node_net}"
            for n, a in nodes.items()
            if ipaddress.ip_address(a) not in node_net
        ]
    if shutil.which("ip") is not None and not problems:
        problems += check_bridge(ip_json("-d", "link", "show"), args.bridge)
        problems += check_addresses_free(ip_json("addr", "show"), allowed, args.bridge)
        problems += check_routes_free(ip_json("route", "show"), allowed, args.bridge)
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    if forward.exists() and forward.read_text().strip() != "0":
        problems.append(
            "net.ipv4.ip_forward=1 on this machine: a node's packets could leave it; onebox "
            "needs forwarding off (sysctl -w net.ipv4.ip_forward=0)"
        )
    if problems:
        for p in problems:
            print(f"onebox preflight: {p}", file=sys.stderr)
        return 2
    print(json.dumps({"ok": True, "nodes": nodes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
