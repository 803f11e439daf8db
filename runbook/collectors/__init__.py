"""Collectors: each turns one source's observations into events in
`collected/<name>.jsonl`, the same files on the local lab and on the homelab.

- `haproxy` -> `haproxy-<lb>.jsonl`: local lab, a subprocess next to the lab's
  HAProxy; homelab, copied to each worker and run next to its HAProxy.
- `podlogs` -> `pods.jsonl`: local lab, the pod runner's container output; homelab,
  the Kubernetes API's log stream (`kube.follow_logs`).
- `envoy` -> `envoy.jsonl`: local lab, Envoy's admin API over HTTP; homelab, the same
  API through a port-forward (`kube.PortForwardAdmin`).
- `kube` -> `kubelet.jsonl`, `endpointslices.jsonl`: homelab, Pod and EndpointSlice
  watches; the local lab's pod runner writes the same events itself.

`haproxy` is standard library only: it is copied to the workers and run by their
python3 alone.
"""
