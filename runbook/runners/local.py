"""One experiment run on the local lab: bring the mode's pods up behind HAProxy, start
the collectors, drive load, terminate one gateway pod mid-load, then the shared
finalize step (merge, summary, journal, report).

    python -m runbook.runners.local --mode improved --profile quick --scenario inflight \
        --lab-index 1 --manifests .lab/1/manifests --haproxy-socket .lab/1/admin.sock \
        --haproxy-url https://127.31.0.100:8443 --ca .lab/1/certs/igw.pem \
        --syslog 127.31.0.100:5514 --artifacts artifacts

HAProxy is provisioned and started by the haproxy role before this runs
(playbooks/run-experiment.yml); this module runs everything behind it. `make
experiment` (runbook.runners.all) runs it once per repeat as its child; a run by hand
(run-experiment.yml) passes `--stop-haproxy`, so that the lab's HAProxy stops with the
run even when Ansible itself is killed before its `always:` step, and
`--stop-with-ansible`, so that the run ends when Ansible does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp

from ..analysis.finalize import finalize, print_summary
from ..artifacts.events import CollectedDir, now_ms
from ..artifacts.journal import Journal
from ..artifacts.rundir import RAW_REQUESTS, new_run_dir, write_json, write_result
from ..artifacts.termination import Termination
from ..artifacts.writes import WriteFailures, is_a_failed_write, written
from ..collectors import envoy, podlogs
from ..collectors import haproxy as haproxy_collector
from ..collectors.haproxy_config import haproxy_source
from ..load import grpcclient
from ..load.driver import LoadDriver, Recorder
from ..localcluster.cluster import LabCluster
from ..localcluster.haproxy_process import stop_lab_haproxy
from ..localcluster.kubelet import Pod
from ..localcluster.lablock import LabBusy, claim
from ..localcluster.manifests import Manifests
from ..localcluster.procfs import ancestors
from ..localcluster.topology import Topology, pods_dir
from ..model import registry
from ..model.plan import add_arguments, add_budget_arguments, plan_for
from . import gotools
from .premise_checks import check_running_lab
from .runstop import RunStop
from .signals import cancel_on_exit_signals, cancel_when_gone, exit_code

#: The local lab's one HAProxy, as the collectors and the summary name it.
LOCAL_LB = "lab-haproxy"
#: How long the pods run after the load ends: Envoy's last access-log lines (one flush
#: interval, registry.ENVOY_ACCESS_LOG_FLUSH_MS) and the pipes behind them
LOG_SETTLE_S = 0.3


class RunFailed(RuntimeError):
    """The run stopped for a reason it names (a failed write, a lab address another
    process holds); cleaned up, its artifacts kept, its result `failed`."""


class Progress:
    """Progress lines on stdout, each with the seconds since the run started (`make
    experiment` streams them with the lab's name in front)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {msg}", flush=True)


async def wait_lb_up(
    socket_path: str, servers: list[str], timeout: float, stable_s: float = 2.0
) -> None:
    """Every server UP (not `UP 1/2`, a check already failing) for `stable_s` in a row:
    a lab that flaps before the load would blame the termination for its own start."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    state: dict[str, str] = {}
    up_since: float | None = None
    while loop.time() < end:
        with contextlib.suppress(OSError):
            text = await asyncio.to_thread(haproxy_collector.show_stat, socket_path)
            state = haproxy_collector.parse_show_stat(text, registry.HAPROXY_BACKEND)
            if all(state.get(s, "") == "UP" for s in servers):
                up_since = loop.time() if up_since is None else up_since
                if loop.time() - up_since >= stable_s:
                    return
            else:
                up_since = None
        await asyncio.sleep(0.2)
    raise TimeoutError(f"HAProxy servers not all steadily UP after {timeout}s: {state}")


async def start_haproxy_collector(
    socket_path: str, syslog: str, out: Path
) -> asyncio.subprocess.Process:
    """The same collector the homelab runs on its workers, as a subprocess here."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runbook.collectors.haproxy",
        f"--socket={socket_path}",
        f"--syslog={syslog}",
        f"--lb={LOCAL_LB}",
        "--seconds=3600",
        f"--out={out}",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    if line.strip() != b"collecting":
        await proc.wait()
        raise RuntimeError(f"the HAProxy collector did not start (exit {proc.returncode})")
    return proc


async def watch_haproxy_collector(
    proc: asyncio.subprocess.Process, out: Path, failures: WriteFailures
) -> None:
    """A collector that could not write its file stops the run like any failed write
    (it says its errno on stderr and exits WRITE_FAILED)."""
    if await proc.wait() == haproxy_collector.WRITE_FAILED:
        failures.report(out, OSError(0, "the HAProxy collector's write failed (see its line)"))


async def stop_process(proc: asyncio.subprocess.Process | None, timeout: float = 5) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def victim_pod(cluster: LabCluster, lb_source: str | None) -> Pod:
    """The gateway pod to terminate: one on a node other than HAProxy's, as the homelab
    runner chooses (HAProxy's own node reaches any gateway through its NodePort). The
    lab's premise checks have made sure there is one."""
    lb_node = cluster.topology.node_at(lb_source)
    return next(p for p in cluster.gateway_pods if p.node != lb_node)


async def run(args: argparse.Namespace) -> Path:
    progress = Progress()
    run_plan = plan_for(args)
    scenario = run_plan.load
    topology = Topology(args.lab_index)
    manifests = Manifests.load(Path(args.manifests), registry.mode(args.mode).manifest)
    run_dir = new_run_dir(Path(args.artifacts), args.scenario, args.mode)
    result_file = Path(args.result_file) if args.result_file else None
    if result_file:
        write_result(result_file, run_dir, "running")
    # the first failed write to the run's artifacts (runbook.artifacts.writes) or lab
    # fault (an address another process holds) stops the run, from whichever writer,
    # task or thread
    stop = RunStop()
    failures = WriteFailures(stop)
    plan_json = run_dir / "plan.json"
    if not written(lambda: write_json(plan_json, run_plan.as_dict()), plan_json, failures):
        if result_file:
            write_result(result_file, run_dir, "failed", stop.reason)
        raise RunFailed(f"{stop.reason}; the run did not start") from None
    progress(f"run {run_dir}")
    collected = CollectedDir(run_dir, failures)
    experiment_events = collected.log("experiment")
    pod_events = collected.log("pods")

    def on_log_line(pod: str, container: str, line: str) -> None:
        found = podlogs.event_from_line(pod, container, line)
        if found is not None:
            pod_events.write(found)

    recorder = Recorder(run_dir / RAW_REQUESTS, failures)
    journal = Journal(args.mode, args.scenario, args.profile, "local")
    cluster = LabCluster(
        topology, manifests, pods_dir(run_dir), collected, on_log_line, on_fault=stop
    )
    haproxy_config = Path(args.haproxy_socket).parent / "haproxy.cfg"
    background: list[asyncio.Task[Any]] = []
    status, term = "interrupted", None
    haproxy_proc = None
    stats_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
    try:
        step = now_ms()
        haproxy_out = collected.path / f"haproxy-{LOCAL_LB}.jsonl"
        haproxy_proc = await start_haproxy_collector(args.haproxy_socket, args.syslog, haproxy_out)
        background.append(
            asyncio.create_task(watch_haproxy_collector(haproxy_proc, haproxy_out, failures))
        )
        await cluster.start()
        await cluster.wait_ready(60)
        await wait_lb_up(args.haproxy_socket, ["worker1", "worker2"], 30)
        # the verify playbook's checks on this lab, before any load: a run on a lab
        # that breaks the premise (no listener, a node answering without a pod, ...)
        # would measure the lab, not the termination order
        found = await check_running_lab(
            cluster,
            args.mode,
            Path(args.manifests),
            haproxy_config,
            args.haproxy_socket,
            urllib.parse.urlsplit(args.haproxy_url).netloc,
            args.profile,
            tls=args.haproxy_url.startswith("https://"),
            planned=run_plan.budget,
        )
        write_json(run_dir / "verify.json", [c.as_dict() for c in found])
        failed = [c for c in found if c.result == "fail"]
        progress(f"lab verified: {len(found) - len(failed)} of {len(found)} checks passed")
        if failed:
            raise RuntimeError(
                "the lab breaks the experiment's premise: "
                + "; ".join(f"{c.name}: {c.detail} (fix: {c.fix})" for c in failed)
            )
        victim = victim_pod(cluster, haproxy_source(haproxy_config.read_text()))
        regex = envoy.active_stat_regex(manifests.gateway_port)
        fetchers = {
            p.name: envoy.http_fetcher(
                stats_session, f"http://{p.ip}:{registry.PORTS.envoy_admin}", regex
            )
            for p in cluster.gateway_pods
        }
        background.append(asyncio.create_task(envoy.poll_active(collected.log("envoy"), fetchers)))
        journal.step("bring-up-lab", step, output={"pods": [p.name for p in cluster.gateway_pods]})
        progress("pods ready, HAProxy sees both workers UP")

        t_term = now_ms() + (scenario.warmup_s + scenario.lead_s) * 1000
        recorder.termination_ms = t_term
        driver = LoadDriver(args.haproxy_url, args.ca, recorder, scenario, args.vegeta_binary)
        step = now_ms()
        load = asyncio.create_task(driver.run())
        offered = ", ".join(f"{c} {r:g}/s" for c, r in scenario.offered_per_s().items())
        progress(f"{args.scenario} load: {offered}")
        if args.scenario == "inflight":
            await asyncio.sleep(scenario.warmup_s)
            progress(
                f"{scenario.sleep_count} x /sleep {scenario.long_s}s and "
                f"{scenario.stream_count} x /stream in flight"
            )
        journal.step("start-load", step)
        await asyncio.sleep(max(0, (t_term - now_ms()) / 1000))
        if load.done():
            await load  # the load ended before the termination: its error, and no deletion
        step = now_ms()
        term = Termination(step, victim.name, victim.node, LOCAL_LB)
        recorder.termination_ms = term.ms
        experiment_events.emit(
            "experiment", "termination_issued", ts_ms=term.ms, pod=victim.name, node=victim.node
        )
        progress(f"terminating {victim.name}")
        await victim.terminate()
        journal.step("terminate-gateway-pod", step, output={"pod": victim.name})
        progress(f"{victim.name} gone")
        step = now_ms()
        await asyncio.sleep(scenario.tail_s)
        driver.stop()
        await load
        journal.step("finish-load", step)
        progress("load finished")
        status = "completed"
    except asyncio.CancelledError:
        if stop.reason is None:
            raise  # an exit signal: interrupted
        status = "failed"
    except Exception as exc:
        status = "failed"
        if isinstance(exc, OSError) and is_a_failed_write(exc):
            failures.report(Path(str(exc.filename or run_dir)), exc)
        else:
            experiment_events.emit("experiment", "failed", error=f"{type(exc).__name__}: {exc}")
            progress(f"failed: {type(exc).__name__}: {exc}")
            raise
    finally:
        stop.cleanup_begins()
        if stop.reason is not None:
            status = "failed"
            progress(f"failed: {stop.reason}; the run stopped, what it wrote is kept")
        # the last requests' access-log lines are in Envoy's buffer for up to one flush
        # interval, then in the pipes: stopping the pods at once would lose them
        await asyncio.sleep(LOG_SETTLE_S)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await stats_session.close()
        await stop_process(haproxy_proc)
        await cluster.stop()
        recorder.close()
        collected.close()
        summary = None
        # after a failed write the disk is full: finalize would only fail again
        if failures.first is None:
            try:
                summary = finalize(run_dir, run_plan, status, journal, term)
            except OSError as exc:
                if not is_a_failed_write(exc):
                    raise
                failures.report(Path(str(exc.filename or run_dir)), exc)
                status = "failed"
                progress(f"failed: {stop.reason}; finalize stopped, what it wrote is kept")
        if result_file:
            write_result(result_file, run_dir, status, stop.reason)
        if args.stop_haproxy:
            stop_lab_haproxy(Path(args.haproxy_socket).parent)
        if status == "interrupted":
            print(f"interrupted: artifacts kept in {run_dir}", flush=True)
    if stop.reason is not None:
        raise RunFailed(f"{stop.reason}; what was written is kept in {run_dir}")
    print_summary(run_dir, summary)
    return run_dir


def main() -> int:
    p = argparse.ArgumentParser(description="one gateway-termination experiment on the local lab")
    add_arguments(p, profile="quick")
    add_budget_arguments(p)
    p.add_argument("--lab-index", type=int, default=1)
    p.add_argument("--manifests", required=True)
    p.add_argument("--haproxy-socket", required=True)
    p.add_argument("--haproxy-url", required=True)
    p.add_argument("--ca")
    p.add_argument("--syslog", required=True, help="HOST:PORT HAProxy logs to")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--result-file", help="write {run_dir, status} here for the caller")
    p.add_argument(
        "--stop-haproxy",
        action="store_true",
        help="stop the lab's HAProxy (haproxy.pid beside the socket) when the run ends, "
        "however it ends: a run by hand is the lab's only one",
    )
    p.add_argument(
        "--stop-with-ansible",
        action="store_true",
        help="stop, as on SIGHUP, when the ansible-playbook that started this run exits "
        "first (Ansible passes SIGINT and SIGTERM on to its commands, not SIGHUP)",
    )
    args = p.parse_args()
    try:
        registry.event_on(args.event, "local")
        args.vegeta_binary = gotools.for_scenario(args.scenario)
        grpcclient.require_trust(args.scenario, args.ca)
    except (registry.UnknownName, gotools.ToolMissing, grpcclient.NoTrust) as exc:
        print(f"runbook.runners.local: {exc}; nothing was started", file=sys.stderr)
        return 2
    # the lab's addresses are the machine's (runbook.localcluster.lablock): refused
    # before anything is written when another command has them; `make experiment`
    # holds its labs' locks for its runs
    try:
        lab_lock = claim(args.lab_index, "run-experiment.yml (runbook.runners.local)")
    except LabBusy as exc:
        print(f"runbook.runners.local: {exc}; nothing was started", file=sys.stderr)
        return 1
    stopped_by: list[signal.Signals] = []
    try:
        asyncio.run(_main_cancellable(args, stopped_by))
    except asyncio.CancelledError:  # an exit signal: cleaned up, artifacts kept
        return exit_code(stopped_by)
    except RunFailed as exc:  # cleaned up, said in one line, result `failed`
        print(f"runbook.runners.local: failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if lab_lock is not None:
            lab_lock.close()
    return 0


async def _main_cancellable(args: argparse.Namespace, stopped_by: list[signal.Signals]) -> None:
    """run(), cancelled by the first exit signal (runbook.runners.signals) so that its
    cleanup runs. More than one can arrive: Ansible passes the terminal's Ctrl-C on to
    the task's command, and `make experiment` also signals the runner directly."""
    cancel_on_exit_signals(stopped_by, "runbook.runners.local")
    if args.stop_with_ansible:
        playbook = [pid for pid, cmd in ancestors() if "ansible-playbook" in cmd]
        if not playbook:
            print(
                "runbook.runners.local: --stop-with-ansible: no ansible-playbook started this run",
                file=sys.stderr,
            )
        cancel_when_gone(playbook, stopped_by, "runbook.runners.local")
    await run(args)


if __name__ == "__main__":
    sys.exit(main())
