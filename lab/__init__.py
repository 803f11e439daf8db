"""The local lab: the homelab's gateway path on one machine (real HAProxy, Envoy, apps)."""
