"""The homelab run's controller side: the Kubernetes API collectors, the load through
HAProxy, and the pod deletion, in one process; the playbook runs the HAProxy collector
on each worker, fetches its file into `collected/` and then calls the shared finalize
step (`runbook.analysis.finalize`). Tested on onebox (tests/test_onebox.py).

    python -m runbook.runners.homelab --context homelab --namespace service-a \
        --url https://192.0.2.11 --lb worker1 --workers worker1,worker2 \
        --mode improved --profile seed --run-dir artifacts/RUN

The victim is a Running gateway pod of the mode that is not being deleted, on a worker
other than the LB's own (kube-proxy sends a node's own NodePort traffic to any ready
endpoint, so the LB's own node would never look DOWN to it). The deletion's actual time
is recorded in `termination.json`; every offset is computed from it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from kubernetes import client, config

from ..artifacts.events import CollectedDir, now_ms
from ..artifacts.rundir import RAW_REQUESTS, write_json, write_result
from ..artifacts.termination import Termination, write_termination
from ..artifacts.writes import WriteFailures, is_a_failed_write, written
from ..collectors import envoy, kube
from ..load import grpcclient
from ..load.driver import LoadDriver, Recorder
from ..model import registry
from ..model.plan import add_arguments, add_budget_arguments, plan_for
from . import disruptions, gotools
from .runstop import RunStop

GATEWAY_SERVICE = registry.OBJECTS.gateway_deployment
BACKEND_SELECTOR = f"app={registry.OBJECTS.backend}"
LOG_SETTLE_S = 3.0
#: How often the run lists the gateway's pods: to read the gauge of a pod started
#: since (the replacement runs within seconds of the deletion), and to see the victim
#: gone.
POD_LOOK_S = 1.0
#: How long an event may take to terminate the victim: a drain's eviction refused by
#: the PodDisruptionBudget, a scale-down's pick not yet seen. Both start with every
#: gateway ready (the playbook's place step), so it is a bound, not a wait. A rollout
#: replaces the pods one after another: its bound is the timing model's
#: `rollout_worst_s`.
EVENT_DEADLINE_S = 30.0


class RunFailed(RuntimeError):
    """The run stopped for the reason it names (a failed write to its artifacts); what
    it wrote is kept, its result `failed`."""


def pods_seen(pods: list[Any], followed: set[str]) -> tuple[list[str], set[str]]:
    """From one listing of the gateway's pods: those now Running that are not yet
    followed (in the listing's order), and every pod listed."""
    new = [
        p.metadata.name
        for p in pods
        if p.status.phase == "Running" and p.metadata.name not in followed
    ]
    return new, {p.metadata.name for p in pods}


def pick_victim(pods: list[Any], workers: list[str], lb: str) -> Any:
    """A running, not-deleting gateway pod on a worker that is not the LB's node."""
    candidates = [
        p
        for p in pods
        if p.status.phase == "Running"
        and p.metadata.deletion_timestamp is None
        and p.spec.node_name in workers
        and p.spec.node_name != lb
    ]
    if not candidates:
        where = ", ".join(f"{p.metadata.name}@{p.spec.node_name}" for p in pods) or "none"
        raise RuntimeError(
            f"no gateway pod to terminate on a worker other than the LB's ({lb}); pods: {where}"
        )
    return sorted(candidates, key=lambda p: p.metadata.name)[0]


def terminate(
    event: str,
    gw: disruptions.Gateway,
    victim: Any,
    pods: list[Any],
    restore: disruptions.Restore,
    budget: dict[str, Any],
) -> disruptions.Terminated:
    """The event carried out on the victim (runbook.runners.disruptions), what it
    changes beyond the pods added to `restore`; `budget`: the run's timing numbers."""
    if event == "rollout":
        deadline = time.monotonic() + float(budget["rollout_worst_s"])
        return disruptions.terminate_rollout(gw, victim, pods, restore, deadline)
    deadline = time.monotonic() + EVENT_DEADLINE_S
    if event == "drain":
        return disruptions.terminate_drain(gw, victim, restore, deadline)
    if event == "scale-down":
        return disruptions.terminate_scale_down(gw, victim, pods, restore, deadline)
    return disruptions.terminate_delete(gw, victim)


def fail(args: argparse.Namespace, run_dir: Path, why: str) -> NoReturn:
    """End the run as `failed`, its result file (if any) saying why."""
    if args.result_file:
        write_result(Path(args.result_file), run_dir, "failed", why)
    raise RunFailed(why)


async def run(args: argparse.Namespace) -> None:
    started_ms = now_ms()
    config.load_kube_config(context=args.context)
    core, discovery, apps = client.CoreV1Api(), client.DiscoveryV1Api(), client.AppsV1Api()
    run_plan = plan_for(args)
    scenario = run_plan.load
    run_dir = Path(args.run_dir)
    # the first failed write to the run's artifacts, from any collector's thread or
    # the load's recorder, stops the run (runbook.artifacts.writes)
    run_stop = RunStop()
    failures = WriteFailures(run_stop)
    plan_json = run_dir / "plan.json"
    if not written(lambda: write_json(plan_json, run_plan.as_dict()), plan_json, failures):
        fail(args, run_dir, f"{run_stop.reason}; the run did not start")
    collected = CollectedDir(run_dir, failures)
    stop = threading.Event()
    selector = f"{registry.GATEWAY_POD_SELECTOR},mode={args.mode}"
    gw = disruptions.Gateway(core, apps, args.namespace, GATEWAY_SERVICE, selector)
    pods = gw.pods()
    victim = pick_victim(pods, args.workers.split(","), args.lb)
    restore = disruptions.Restore()
    print(f"victim {victim.metadata.name} on {victim.spec.node_name}", flush=True)
    threads = [
        threading.Thread(
            target=kube.watch_pods,
            args=(core, args.namespace, selector, collected.log("kubelet"), stop),
        ),
        threading.Thread(
            target=kube.watch_endpointslices,
            args=(
                discovery,
                args.namespace,
                GATEWAY_SERVICE,
                collected.log("endpointslices"),
                stop,
            ),
        ),
    ]
    # every container's log of the gateway's and the backend's pods, replacements
    # included: the drain's steps, hc's transitions, Envoy's and the backend's lines
    threads.append(
        threading.Thread(
            target=kube.follow_every_container,
            args=(core, args.namespace, [selector, BACKEND_SELECTOR], collected.log("pods"), stop),
        )
    )
    for t in threads:
        t.start()
    regex = envoy.active_stat_regex(args.gateway_port)

    def fetcher(name: str) -> envoy.StatsFetcher:
        admin = kube.PortForwardAdmin(core, args.namespace, name)

        async def fetch() -> Any:
            params = {"format": "json", "filter": regex}
            return await asyncio.to_thread(admin.get_json, "/stats", params)

        return fetch

    fetchers = {p.metadata.name: fetcher(p.metadata.name) for p in pods}

    # the gateway's pods as last listed, and an event set at each listing
    listed = {p.metadata.name for p in pods}
    looked = asyncio.Event()

    async def follow_pods() -> None:
        """One listing a second, off the event loop (the load driver's requests share
        it): a pod that starts running gets its gauge read too."""
        while True:
            new, names = pods_seen(await asyncio.to_thread(gw.pods), set(fetchers))
            for name in new:
                fetchers[name] = fetcher(name)
            listed.clear()
            listed.update(names)
            looked.set()
            await asyncio.sleep(POD_LOOK_S)

    async def gone(names: list[str]) -> None:
        """Until no listing shows any of the pods."""
        while any(n in listed for n in names):
            looked.clear()
            await looked.wait()

    gauge = asyncio.create_task(envoy.poll_active(collected.log("envoy"), fetchers, 0.5))
    pods_followed = asyncio.create_task(follow_pods())
    recorder = Recorder(run_dir / RAW_REQUESTS, failures)
    driver = LoadDriver(args.url, args.ca, recorder, scenario, args.vegeta_binary)
    experiment = collected.log("experiment")

    def step(name: str, start_ms: float, output: Any = None) -> float:
        """A journal step (finalize, another process, replays it); the next one's start."""
        end = now_ms()
        experiment.emit("experiment", "step", end, name=name, start_ms=start_ms, output=output)
        return end

    started = step("start-collectors", started_ms, {"victim": victim.metadata.name})
    load: asyncio.Task[Any] | None = None
    try:
        load = asyncio.create_task(driver.run())
        await asyncio.sleep(scenario.warmup_s + scenario.lead_s)
        if load.done():
            await load  # the load ended before the termination: its error, and no deletion
        started = step("start-load", started)
        issued_ms = now_ms()
        recorder.termination_ms = issued_ms
        experiment.emit(
            "experiment",
            "termination_issued",
            ts_ms=issued_ms,
            pod=victim.metadata.name,
            node=victim.spec.node_name,
            event=run_plan.event,
        )
        try:
            done = await asyncio.to_thread(
                terminate,
                run_plan.event,
                gw,
                victim,
                pods,
                restore,
                run_plan.budget,
            )
        except disruptions.EventFailed as exc:
            fail(args, run_dir, f"{run_plan.event}: {exc}")
        for note in done.notes:
            fields = {k: v for k, v in note.items() if k not in ("kind", "ts_ms")}
            experiment.emit("experiment", note["kind"], note["ts_ms"], **fields)
        term = Termination(issued_ms, done.pod, done.node, args.lb, run_plan.event, list(done.pods))
        write_termination(run_dir, term)
        terminated = [str(v["pod"]) for v in done.pods] or [term.pod]
        started = step(
            "terminate-gateway-pod",
            started,
            {"pod": term.pod, "pods": terminated, "event": run_plan.event},
        )
        # each pod goes within its grace from its own termination; the last began by now
        grace = float(run_plan.budget["gateway_grace_s"])
        with contextlib.suppress(TimeoutError):  # the journal's step says how long
            await asyncio.wait_for(gone(terminated), grace + 30)
        started = step("wait-for-pod-gone", started)
        await asyncio.sleep(scenario.tail_s)
        driver.stop()
        await load
        # the last requests' lines are still on their way: Envoy's access-log buffer
        # (registry.ENVOY_ACCESS_LOG_FLUSH_MS) and the log streams behind it
        await asyncio.sleep(LOG_SETTLE_S)
        step("finish-load", started, {"requests": len(recorder.records)})
    except asyncio.CancelledError:
        if run_stop.reason is None:
            raise  # an exit signal: interrupted, finalized as such by the caller
    except OSError as exc:
        if not is_a_failed_write(exc):
            raise
        failures.report(Path(str(exc.filename or run_dir)), exc)
    finally:
        run_stop.cleanup_begins()
        # what the event changed beyond the pod (a cordon, the replicas) goes back first,
        # whatever else the cleanup meets
        not_restored = restore()
        stop.set()
        driver.stop()
        background = [t for t in (gauge, pods_followed, load) if t is not None]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        recorder.close()
        for t in threads:
            if not t.daemon:
                t.join(kube.WATCH_WINDOW_S + 5)
        collected.close()
    if not_restored:
        fail(args, run_dir, f"{run_plan.event} left the cluster changed: {'; '.join(not_restored)}")
    if run_stop.reason is not None:
        fail(args, run_dir, f"{run_stop.reason}; the run stopped, what it wrote is kept")
    print(json.dumps({"requests": len(recorder.records), "termination_ms": term.ms}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--url", required=True, help="HAProxy's frontend, e.g. https://worker1")
    p.add_argument("--ca")
    p.add_argument("--lb", required=True, help="inventory name of the HAProxy the load uses")
    p.add_argument("--workers", required=True, help="comma-separated worker node names")
    add_arguments(p, profile="seed")
    add_budget_arguments(p)
    p.add_argument("--gateway-port", type=int, default=registry.PORTS.gateway)
    p.add_argument("--run-dir", required=True)
    p.add_argument(
        "--result-file", default="", help="where a failed run says why (make experiment's)"
    )
    args = p.parse_args()
    try:
        registry.event_on(args.event, "cluster")
        args.vegeta_binary = gotools.for_scenario(args.scenario)
        grpcclient.require_trust(args.scenario, args.ca)
    except (registry.UnknownName, gotools.ToolMissing, grpcclient.NoTrust) as exc:
        print(f"runbook.runners.homelab: {exc}; nothing was started", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args))
    except RunFailed as exc:
        print(f"runbook.runners.homelab: failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
