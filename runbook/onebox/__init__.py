"""onebox: the homelab's kubeadm cluster on this one machine, from upstream sources.

    pins      what the project's Go modules (onebox/modules/*) pin, read from their go.mod
    build     one Go module's binaries built into the machine-wide cache, once per pin
    machines  a node's life: systemd-nspawn booted in its network namespace, and stopped

The playbooks (playbooks/onebox.yml, playbooks/onebox-down.yml) drive these; the
roles onebox_build, onebox_host and onebox_node hold the rest. docs/onebox.md explains.
"""
