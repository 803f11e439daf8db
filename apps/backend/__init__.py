"""backend: long-lived requests for the graceful-termination experiment (seed 003 §3)."""
