"""hc: the ingress gateway's health-check sidecar (seed 003 §4), in Python."""
