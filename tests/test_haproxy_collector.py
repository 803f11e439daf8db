"""runbook.collectors.haproxy: HAProxy's per-request log lines, as the collector reads them."""

from __future__ import annotations

TS = "2026-11-22T10:00:00.250Z"
TS_MS = 1795341600250.0


def test_the_collector_reads_haproxy_request_lines() -> None:
    from runbook.collectors import haproxy as haproxy_collector

    line = (
        "<134>Nov 22 14:00:00 haproxy[1]: igw_request rid=ab-000001 srv=worker1 st=502 "
        "term=DH Tq=1 Tw=0 Tc=0 Tr=-1 Ta=2855 bytes=0 retries=0"
    )
    fields = haproxy_collector.request_fields(line)
    assert fields is not None and fields["rid"] == "ab-000001" and fields["term"] == "DH"
    assert haproxy_collector.request_fields("Health check for server x/y failed") is None
    empty = haproxy_collector.request_fields("igw_request rid=- srv=<NOSRV> st=503")
    assert empty is not None and empty["rid"] == ""
