"""The experiment's tooling, in layers whose imports go one way (import-linter checks
it in `make lint`):

    runners                                   local lab, homelab, `make experiment`
    collectors | load | localcluster | analysis
    artifacts                                 events, run directory, journal
    model                                     timing budget, registry, run plan (stdlib)

The apps (`hc`, `backend`, `applog`) are a distribution of their own (`apps/`); the
runbook may use `applog`, the apps never import the runbook.
"""
