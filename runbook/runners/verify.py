"""`playbooks/verify.yml`: gather what the seed's manual checks look at, judge it
(runbook.analysis.checks) and write `artifacts/verify-<UTC stamp>.json`. Exit 1 when a
check fails.

Local lab: bring the mode's pods up behind the lab's HAProxy, read every fact from a
real process (Envoy's admin `/listeners`, HTTP through each node's NodePort, HAProxy's
runtime API, TLS handshakes with its frontend), stop the pods.

    python -m runbook.runners.verify local --mode ordered --lab-index 200 \
        --scratch-dir .lab/200/verify --manifests .lab/200/manifests \
        --haproxy-socket .lab/200/admin.sock --haproxy-config .lab/200/haproxy.cfg \
        --haproxy-address 127.230.0.100:8443

Homelab (tested on onebox): the same checks from the Kubernetes API (objects,
pod status, Envoy's `/listeners` through a port-forward), the seed's curl test against
every node's check NodePort from the controller, TLS against the LB host, and the
workers' HAProxy states and config that the playbook read on each worker.

    python -m runbook.runners.verify homelab --mode improved --context homelab \
        --namespace service-a --lb-states states.json --haproxy-config lb.cfg \
        --haproxy-address 192.168.56.11:443
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ..analysis import checks
from ..artifacts.rundir import utc_stamp, write_json
from ..localcluster.lablock import LabBusy, claim
from ..model import registry, timing
from .premise_checks import gather_homelab, gather_local


def report(found: list[checks.Check], artifacts: Path, target: str, mode: str) -> Path:
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"verify-{utc_stamp()}.json"
    write_json(
        path,
        {
            "target": target,
            "mode": mode,
            "passed": all(c.result == "pass" for c in found),
            "checks": [c.as_dict() for c in found],
        },
    )
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="target", required=True)
    local = sub.add_parser("local", help="the local lab (real processes)")
    homelab = sub.add_parser("homelab", help="the kubeadm homelab (Kubernetes API)")
    for q in (local, homelab):
        q.add_argument("--mode", required=True, choices=list(registry.MODES))
        q.add_argument("--profile", default="quick", choices=list(timing.PROFILES))
        q.add_argument("--haproxy-config", required=True)
        q.add_argument("--haproxy-address", required=True, help="HOST:PORT of the HTTPS frontend")
        q.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    local.add_argument("--lab-index", type=int, required=True)
    local.add_argument("--scratch-dir", required=True, help="the verification pods' scratch")
    local.add_argument("--manifests", required=True)
    local.add_argument("--haproxy-socket", required=True)
    homelab.add_argument("--context", required=True)
    names = registry.OBJECTS
    homelab.add_argument("--namespace", default=names.namespace)
    homelab.add_argument("--deployment", default=names.gateway_deployment)
    homelab.add_argument("--backend", default=names.backend)
    homelab.add_argument("--gateway", default=names.gateway)
    homelab.add_argument("--virtualservice", default=names.virtualservice)
    homelab.add_argument("--lb-host", required=True, help="the node the experiment's LB runs on")
    homelab.add_argument(
        "--lb-states", required=True, help="JSON {lb host: {server: status}} read on each worker"
    )
    args = p.parse_args()
    if args.target == "local":
        # the lab's addresses are the machine's: another command on it would answer
        # these checks for us (runbook.localcluster.lablock)
        try:
            lab_lock = claim(args.lab_index, "verify.yml (runbook.runners.verify)")
        except LabBusy as exc:
            print(f"runbook.runners.verify: {exc}; nothing was started", file=sys.stderr)
            return 1
        try:
            found = asyncio.run(gather_local(args))
        finally:
            if lab_lock is not None:
                lab_lock.close()
    else:
        found = gather_homelab(args)
    path = report(found, args.artifacts, args.target, args.mode)
    print(checks.table(found))
    failed = [c.name for c in found if c.result == "fail"]
    print(f"\n{len(found) - len(failed)} of {len(found)} checks passed; report: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
