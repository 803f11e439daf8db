"""Runners: one experiment on the local lab (`local`), the homelab's controller-side
half (`homelab`), and `make experiment` (`all`). The top layer: nothing imports it."""
