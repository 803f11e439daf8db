"""How the load's clients trust the LB: the lab's CA when one is given, else no
verification; never the host name (the lab's certificate names the homelab host,
not the address the clients ask for)."""

from __future__ import annotations

import ssl


def client_tls(ca_file: str | None) -> ssl.SSLContext | bool:
    """An SSL context for aiohttp's `ssl=` and httpx's `verify=` alike; False: none."""
    if not ca_file:
        return False
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = False
    return ctx
