"""A TLS probe of an HAProxy frontend: which protocol versions it completes a
handshake with (verify's check that TLS 1.1 and older are refused)."""

from __future__ import annotations

import socket
import ssl
import warnings


def tls_accepts(address: str, version: ssl.TLSVersion) -> bool:
    """Whether the frontend completes a handshake offering only `version`."""
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # let this client offer old versions at all, so a refusal is the server's
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # offering TLS 1.1 is the point of the probe
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    try:
        with (
            socket.create_connection((host, int(port)), timeout=3) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            return tls.version() is not None
    except (ssl.SSLError, OSError):
        return False
