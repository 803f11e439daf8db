"""One experiment run on the local lab: bring the mode's pods up behind HAProxy, drive
load, terminate one gateway pod mid-load, collect, summarise, report.

    python -m lab.experiment --mode improved --profile quick --scenario inflight \
        --lab-index 1 --manifests .lab/1/manifests --haproxy-socket .lab/1/admin.sock \
        --haproxy-url https://127.31.0.100:8443 --ca .lab/1/certs/igw.pem \
        --syslog 127.31.0.100:5514 --artifacts artifacts

HAProxy is provisioned and started by the haproxy role before this runs
(playbooks/run-experiment.yml); this module runs everything behind it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import timing
from .cluster import LabCluster, Manifests, Topology
from .collect import poll_envoy_gauges, poll_haproxy, runtime_api, syslog_receiver
from .events import EventLog, now_ms, read_jsonl
from .haproxy_poll import parse_show_stat
from .load import InflightScenario, LoadDriver, Recorder
from .report import write_run_report
from .summary import summarize, verdict

MODE_FILES = {"current": "20-igw-current.yaml", "improved": "21-igw-improved.yaml"}
SCENARIOS = ("inflight",)


class BadInput(ValueError):
    pass


def check_inputs(mode: str, scenario: str, profile: str) -> None:
    """Refuse a bad mode, scenario or profile before anything changes."""
    for name, value, valid in (
        ("mode", mode, list(MODE_FILES)),
        ("scenario", scenario, list(SCENARIOS)),
        ("profile", profile, list(timing.PROFILES)),
    ):
        if value not in valid:
            raise BadInput(f"{name} {value!r} is not one of: {', '.join(valid)}")


def plan(
    profile: str, mode: str, overrides: dict[str, Any] | None = None
) -> tuple[InflightScenario, dict[str, Any]]:
    """Size the long requests from what the gateway path protects (timing model)."""
    budget = timing.derive(profile, overrides)
    protected = timing.protected_by_path(budget)
    best = float(protected["gateway_improved"]["longest_s"])
    mine = float(protected[f"gateway_{mode}"]["longest_s"])
    long_s = max(1, int(best) - 2)  # ends inside the improved path's window, with 2 s to spare
    scenario = InflightScenario(long_s=long_s)
    notes = [
        f"Long requests last {long_s}s and start {scenario.lead_s:g}s before the termination: "
        f"inside the {best:g}s a gateway termination can protect at best (improved: "
        "DRAIN_TIMEOUT; pilot-agent kills Envoy at terminationDrainDuration).",
    ]
    if long_s > mine:
        notes.append(
            f"The {mode} path protects {mine:g}s: these requests are longer than it can carry "
            "by design, to show what it cuts."
        )
    meta = {
        "long_s": long_s,
        "protected_s": mine,
        "exceeds_protection": long_s > mine,
        "notes": notes,
        "budget": budget.as_dict(),
    }
    return scenario, meta


def new_run_dir(artifacts: Path, scenario: str, mode: str) -> Path:
    artifacts.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 100):
        suffix = "" if n == 1 else f"-{n}"
        path = artifacts / f"{stamp}-{scenario}-{mode}{suffix}"
        try:
            path.mkdir()  # never reuse: artifacts are never overwritten
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot find a fresh run directory under {artifacts}")


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class Journal:
    """journal.json in Chaos Toolkit's journal schema."""

    def __init__(self, mode: str, scenario: str, profile: str) -> None:
        self.mode, self.scenario, self.profile = mode, scenario, profile
        self.start_ms = now_ms()
        self.run: list[dict[str, Any]] = []

    def activity(
        self, name: str, start_ms: float, status: str = "succeeded", output: Any = None
    ) -> None:
        end = now_ms()
        self.run.append(
            {
                "activity": {
                    "type": "action",
                    "name": name,
                    "provider": {"type": "python", "module": "lab.experiment"},
                },
                "status": status,
                "output": output,
                "start": _iso(start_ms),
                "end": _iso(end),
                "duration": round((end - start_ms) / 1000, 3),
            }
        )

    def write(
        self, path: Path, status: str, summary: dict[str, Any] | None, termination_ms: float | None
    ) -> None:
        end = now_ms()
        cut = None if summary is None else summary["cut_in_flight"]
        doc = {
            "chaoslib-version": None,
            "platform": platform.platform(),
            "node": socket.gethostname(),
            "experiment": {
                "version": "1.0.0",
                "title": f"Terminate a gateway pod under load ({self.mode})",
                "description": "When an Istio ingress gateway pod terminates behind HAProxy, "
                "are in-flight requests cut?",
                "tags": [self.mode, self.scenario, self.profile],
                "steady-state-hypothesis": {
                    "title": "No request in flight at the termination is cut",
                    "probes": [
                        {
                            "type": "probe",
                            "name": "cut-in-flight-is-zero",
                            "tolerance": 0,
                            "provider": {"type": "python", "module": "lab.summary"},
                        }
                    ],
                },
                "method": [{"type": "action", "name": a["activity"]["name"]} for a in self.run],
                "rollbacks": [],
            },
            "start": _iso(self.start_ms),
            "end": _iso(end),
            "duration": round((end - self.start_ms) / 1000, 3),
            "status": status,
            "deviated": bool(cut),
            "steady_states": {
                "before": None,
                "during": [],
                "after": None
                if cut is None
                else {
                    "steady_state_met": cut == 0,
                    "probes": [{"output": cut, "tolerance_met": cut == 0}],
                },
            },
            "run": self.run,
            "rollbacks": [],
            "termination_ms": termination_ms,
        }
        with path.open("x", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)


class Progress:
    """Progress lines on stdout and, for callers that cannot stream stdout (Ansible), a file."""

    def __init__(self, path: Path | None) -> None:
        self.started = time.monotonic()
        self.path = path

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {msg}"
        print(line, flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


async def wait_lb_up(socket_path: str, servers: list[str], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    state: dict[str, str] = {}
    while loop.time() < end:
        with contextlib.suppress(OSError):
            state = parse_show_stat(await runtime_api(socket_path, "show stat"), "igw_nodeports")
            if all(state.get(s, "").startswith("UP") for s in servers):
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"HAProxy servers not all UP after {timeout}s: {state}")


async def run(args: argparse.Namespace) -> Path:
    progress = Progress(Path(args.progress_file) if args.progress_file else None)
    overrides = json.loads(args.overrides) if args.overrides else None
    scenario, meta = plan(args.profile, args.mode, overrides)
    topology = Topology(args.lab_index)
    manifests = Manifests.load(Path(args.manifests), MODE_FILES[args.mode])
    run_dir = new_run_dir(Path(args.artifacts), args.scenario, args.mode)
    progress(f"run {run_dir}")
    events = EventLog(run_dir / "events.jsonl")
    recorder = Recorder(run_dir / "requests.jsonl")
    journal = Journal(args.mode, args.scenario, args.profile)
    cluster = LabCluster(topology, manifests, run_dir / "lab", events)
    background: list[asyncio.Task[Any]] = []
    status, summary, t_term = "interrupted", None, None
    syslog = None
    try:
        step = now_ms()
        host, _, port = args.syslog.rpartition(":")
        syslog = await syslog_receiver(events, host, int(port))
        background.append(asyncio.create_task(poll_haproxy(events, args.haproxy_socket)))
        await cluster.start()
        await cluster.wait_ready(60)
        await wait_lb_up(args.haproxy_socket, ["worker1", "worker2"], 30)
        stat = rf"^http\.outbound_0\.0\.0\.0_{manifests.gateway_port}\.downstream_rq_active$"
        background.append(
            asyncio.create_task(
                poll_envoy_gauges(
                    events, {p.name: f"http://{p.ip}:15000" for p in cluster.gateway_pods}, stat
                )
            )
        )
        journal.activity(
            "bring-up-lab", step, output={"pods": [p.name for p in cluster.gateway_pods]}
        )
        progress("pods ready, HAProxy sees both workers UP")

        victim = cluster.gateway_pods[0]
        t_term = now_ms() + (scenario.warmup_s + scenario.lead_s) * 1000
        recorder.termination_ms = t_term
        driver = LoadDriver(args.haproxy_url, args.ca, recorder, scenario)
        step = now_ms()
        shorts = asyncio.create_task(driver.shorts())
        progress(f"short requests at {scenario.short_rate_per_s:g}/s")
        await asyncio.sleep(scenario.warmup_s)
        longs = asyncio.create_task(driver.longs())
        progress(
            f"{scenario.sleep_count} x /sleep {scenario.long_s}s and {scenario.stream_count} "
            f"x /stream in flight"
        )
        journal.activity("start-load", step)
        await asyncio.sleep(max(0, (t_term - now_ms()) / 1000))
        step = now_ms()
        events.emit("experiment", "termination_issued", pod=victim.name, node=victim.node)
        progress(f"terminating {victim.name}")
        await victim.terminate()
        journal.activity("terminate-gateway-pod", step, output={"pod": victim.name})
        progress(f"{victim.name} gone")
        step = now_ms()
        await asyncio.sleep(scenario.tail_s)
        driver.stop_shorts()
        await longs
        await shorts
        journal.activity("finish-load", step)
        progress("load finished")
        status = "completed"
    except Exception as exc:
        status = "failed"
        events.emit("experiment", "failed", error=f"{type(exc).__name__}: {exc}")
        progress(f"failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        for task in background:
            task.cancel()
        if syslog is not None:
            syslog.close()
        await cluster.stop()
        events.close()
        recorder.close()
        summary = finish_run(
            run_dir,
            meta,
            args.mode,
            args.scenario,
            args.profile,
            status,
            journal,
            t_term,
            cluster.gateway_pods[0].name,
            cluster.gateway_pods[0].node,
        )
    print_summary(run_dir, summary)
    return run_dir


def finish_run(
    run_dir: Path,
    meta: dict[str, Any],
    mode: str,
    scenario: str,
    profile: str,
    status: str,
    journal: Journal,
    t_term: float | None,
    pod: str,
    node: str,
) -> dict[str, Any] | None:
    """summary.json, journal.json and report.html from what the run recorded."""
    summary = None
    if t_term is not None:
        records = read_jsonl(run_dir / "requests.jsonl")
        summary = summarize(
            records,
            read_jsonl(run_dir / "events.jsonl"),
            {
                **meta,
                "mode": mode,
                "scenario": scenario,
                "profile": profile,
                "termination_ms": t_term,
                "terminated_pod": pod,
                "terminated_node": node,
            },
        )
        summary["notes"] = meta["notes"] + (
            [] if status == "completed" else [f"run {status}: the figures cover what was recorded"]
        )
        with (run_dir / "summary.json").open("x", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    journal.write(run_dir / "journal.json", status, summary, t_term)
    if summary is not None:
        write_run_report(run_dir)
    return summary


def print_summary(run_dir: Path, summary: dict[str, Any] | None) -> None:
    if summary is None:
        print(f"no summary: the run stopped before the termination ({run_dir})")
        return
    c = summary["classes"]
    t = summary["timings_s"]
    lines = [
        "",
        f"== {verdict(summary)}",
        f"   long requests {summary['long_request_s']}s; "
        f"this path protects {summary['protected_s']}s",
        "   "
        + "  ".join(f"{k}: {v['ok']}/{v['total']} ok {v['by_error'] or ''}" for k, v in c.items()),
        f"   in flight at termination: {summary['in_flight_at_termination']} "
        f"{summary['in_flight_by_class']}, cut: {summary['cut_in_flight']} "
        f"{summary['cut_in_flight_by_error'] or ''}",
        f"   termination -> LB DOWN {t['termination_to_lb_down']}s, preStop {t['prestop']}s, "
        f"pod gone {t['termination_to_pod_gone']}s, drain overhead {t['drain_overhead']}s",
        f"   artifacts: {run_dir}",
        f"   report:    {run_dir / 'report.html'}",
    ]
    print("\n".join(lines), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description="one gateway-termination experiment on the local lab")
    p.add_argument("--mode", required=True)
    p.add_argument("--scenario", default="inflight")
    p.add_argument("--profile", default="quick")
    p.add_argument("--overrides", help="timing overrides as JSON")
    p.add_argument("--lab-index", type=int, default=1)
    p.add_argument("--manifests", required=True)
    p.add_argument("--haproxy-socket", required=True)
    p.add_argument("--haproxy-url", required=True)
    p.add_argument("--ca")
    p.add_argument("--syslog", required=True, help="HOST:PORT HAProxy logs to")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--progress-file", help="also append progress lines here")
    args = p.parse_args()
    try:
        check_inputs(args.mode, args.scenario, args.profile)
    except BadInput as exc:
        print(f"lab.experiment: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
