"""The model: the timing budget, the registry of modes and scenarios, the run plan.

Standard library only, so that Ansible's filter plugin, the runners and the tests import
it alike. Nothing here imports from the rest of `runbook`.
"""
