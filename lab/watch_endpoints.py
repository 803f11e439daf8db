"""Watch a Service's EndpointSlices and write each endpoint's conditions as JSON lines.

    python -m lab.watch_endpoints --context homelab --namespace service-a \
        --service service-a-igw --seconds 400 --out events-endpointslices.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kubernetes import config, watch
from kubernetes.client import DiscoveryV1Api


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    config.load_kube_config(context=args.context)
    api = DiscoveryV1Api()
    last: dict[str, tuple[bool, bool, bool]] = {}
    deadline = time.monotonic() + args.seconds
    with open(args.out, "x", buffering=1, encoding="utf-8") as out:
        while (remaining := int(deadline - time.monotonic())) > 0:
            stream = watch.Watch().stream(
                api.list_namespaced_endpoint_slice,
                args.namespace,
                label_selector=f"kubernetes.io/service-name={args.service}",
                timeout_seconds=remaining,
            )
            for event in stream:
                for ep in event["object"].endpoints or []:
                    pod = ep.target_ref.name if ep.target_ref else ",".join(ep.addresses)
                    c = ep.conditions
                    cond = (bool(c.ready), bool(c.serving), bool(c.terminating))
                    if last.get(pod) != cond:
                        last[pod] = cond
                        out.write(
                            json.dumps(
                                {
                                    "ts_ms": round(time.time() * 1000, 1),
                                    "source": "endpointslice",
                                    "kind": "conditions",
                                    "pod": pod,
                                    "node": ep.node_name,
                                    "ready": cond[0],
                                    "serving": cond[1],
                                    "terminating": cond[2],
                                    "event": event["type"],
                                }
                            )
                            + "\n"
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
