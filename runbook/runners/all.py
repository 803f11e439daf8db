"""`make experiment`: every mode in every scenario on the local lab (or on a cluster:
`--target onebox`), side by side, then one comparison.

Each mode has an isolated lab of its own (its own loopback /16, ports and files; its
HAProxy configured for the mode), which runs the mode's scenarios one after the other:
a scenario is only the runner's load, so a lab per scenario would only converge another
HAProxy. When there are more slots than modes, a mode's scenarios are split between
labs of its own (`lab_plan`). Every mode's manifests are rendered once for all the labs
(`.lab/manifests-<profile>`); `playbooks/run-experiment.yml` converges every lab
before any run starts (HAProxy provisioned and running, the runner's command written
to `.lab/<N>/runner.json`): Ansible's CPU is spent before a run measures anything.
Then each lab runs its scenarios' repeats one after the other, each a
`runbook.runners.local` child whose progress lines it shows with the mode and scenario
in front (all its output in `.lab/<N>/runner-<scenario>-<repeat>.log`) and whose exit
code and result (`.lab/<N>/result-<scenario>-<repeat>.json`: its run directory, how it
ended) it reads when the child ends. A run whose lab did not hold steady
(runbook.analysis.validity) is kept and shown but not counted, and another run takes
its place (MAX_REPLACEMENTS per mode and scenario). At most LABS_PER_CPU labs per
usable CPU run at once (`--labs-at-once` to choose): more starve each other's health
checks and their runs measure the machine, not the order.

One `make experiment` at a time per checkout: a second one, started while the first
runs, is refused at once with a message naming the first (it would take the same
folders). The lock is `.lab/experiment.lock`. And a lab's addresses are the machine's:
each lab's machine-wide lock (runbook.localcluster.lablock) is held for the whole
command, so another checkout's command on one of them is refused, naming it. The
kernel releases every lock when its holder exits, however it exits.

Ctrl-C (SIGINT to the whole process group, as a terminal sends it), SIGTERM (a CI
timeout, `timeout(1)`, systemd) and SIGHUP (a closing terminal) stop every run alike
(runbook.runners.signals): each keeps what it recorded and its journal says `interrupted`;
then every lab process is gone, HAProxy included, one line per run says where its
artifacts are, and only then does the command exit (128 + the signal's number).

On a cluster (`--target onebox` or `homelab`: an inventory, runbook.runners.targets)
there is one lab, the cluster: `site.yml` converges it once, then its modes run one
after the other, each mode's runs one `playbooks/run-experiment.yml` on its inventory
(the mode flipped once, then each run: load, the deletion, the workers' HAProxy views
fetched, finalize), with the same validity rules, replacements (in a further playbook)
and comparison; the console shows the plays, each run's start and its verdict (all
the output in `.lab/<target>/<mode>/runs-<n>.log`).
When the artifacts folder holds a comparison from the local lab, the two are set side
by side (runbook.analysis.labs).

    python -m runbook.runners.all [--modes current,ordered] [--scenarios steady] [--repeats 3]
    python -m runbook.runners.all --target onebox
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..analysis.comparison import comparison_doc, invalid_runs, timing_line, timing_summary
from ..analysis.labs import latest_comparison, write_side_by_side
from ..analysis.report import summaries_by_pair, write_comparison
from ..analysis.summary import verdict
from ..artifacts.rundir import read_result, utc_stamp, write_json
from ..localcluster.cluster import kill_leftover_pods
from ..localcluster.haproxy_process import stop_lab_haproxy
from ..localcluster.lablock import LabBusy, LockHeld, claim_all, hold
from ..model import registry, timing
from ..model.plan import check_inputs
from . import targets
from .signals import cancel_on_exit_signals, exit_code
from .targets import Target

#: The checkout this module runs from (`make setup` installs the project editable):
#: its playbooks, and its `.lab/` for the labs' scratch files and the lock.
CHECKOUT = Path(__file__).resolve().parents[2]
#: How long an interrupted run may take to write its artifacts before it is killed.
CLEANUP_TIMEOUT_S = 60
#: Labs start this far apart: on two cores, eight labs booting their pods at the same
#: instant starve each other's health checks (HAProxy's 0.5 s check timeout in the
#: quick profile) and HAProxy marks healthy gateways DOWN before the termination.
LAB_STAGGER_S = 2.5
#: How many labs may run at once per CPU this process may use. Measured on 2 cores
#: (benchmarks/RESULTS.md, "Labs at once"): at 4 per CPU 7 of 31 runs saw a survivor
#: marked DOWN by a starved check (a 0.5 s check timeout); at 2 per CPU none of 96.
LABS_PER_CPU = 2
#: Runs that may take the place of invalid ones of one mode and scenario
#: (runbook.analysis.validity), beyond the repeats asked: then the verdict says it is
#: incomplete.
MAX_REPLACEMENTS = 2
#: The highest lab index: lab N is the loopback network 127.(30+N) (the validate role
#: refuses the same).
MAX_LAB_INDEX = 200
#: The runner's command, written by the converge playbook into each lab's folder.
RUNNER_ARGV = "runner.json"


def usable_cpus() -> int:
    """The CPUs this process may run on (a cpuset or `taskset` narrows them)."""
    return len(os.sched_getaffinity(0))


def default_labs_at_once(pairs: int, cpus: int) -> int:
    """LABS_PER_CPU per usable CPU, no more labs than there are pairs, at least one."""
    return max(1, min(pairs, LABS_PER_CPU * cpus))


def lab_plan(
    modes: list[str], scenarios: list[str], labs_at_once: int
) -> list[tuple[str, tuple[str, ...]]]:
    """The labs to converge, as (mode, the scenarios it runs in order): one per mode, or
    as many per mode as the slots allow, up to one per scenario, the scenarios dealt out
    among them; scenarios whose HAProxy speaks another protocol to the gateways
    (by_lb_protocol) never share a lab. Each lab converged is Ansible's CPU spent; each
    slot left idle is runs waiting."""
    groups = by_lb_protocol(scenarios)
    out = []
    for m in modes:
        for group in groups:
            per = max(1, min(len(group), labs_at_once // (len(modes) * len(groups))))
            out += [(m, group[k::per]) for k in range(per)]
    return out


def by_lb_protocol(scenarios: list[str] | tuple[str, ...]) -> list[tuple[str, ...]]:
    """The scenarios grouped by what HAProxy speaks to the gateways in them
    (registry.Scenario.lb_protocol), in order of first appearance: one HAProxy config
    serves a group (a lab's, or a cluster's between two flips)."""
    groups: dict[str, list[str]] = {}
    for sc in scenarios:  # each a case: a scenario under an event (registry.case)
        scenario, _ = registry.split_case(sc)
        groups.setdefault(registry.scenario(scenario).lb_protocol, []).append(sc)
    return [tuple(g) for g in groups.values()]


class Busy(RuntimeError):
    """Another `make experiment` holds this checkout's labs."""


def take_lock(path: Path, labs: list[str], first_index: int) -> IO[str]:
    """The checkout's experiment lock, or Busy naming its holder. Keep the returned file
    open for as long as the labs are in use."""
    try:
        return hold(
            path,
            {
                "pid": os.getpid(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "labs": dict(zip(range(first_index, first_index + len(labs)), labs, strict=True)),
            },
        )
    except LockHeld as held:
        raise Busy(str(held) or "(no details)") from None


class LabFailed(RuntimeError):
    """A lab could not be converged: its runs never started."""


@dataclass
class LabRun:
    #: where it runs: the local lab, or a cluster (all its modes one lab, one at a time)
    target: Target
    mode: str
    #: what it runs, one after the other
    scenarios: tuple[str, ...]
    index: int
    lab_dir: Path
    #: what runs for the lab now, in a session of its own: its converge playbook, then
    #: each repeat's runner; None between them
    proc: asyncio.subprocess.Process | None = None
    #: the run now going or last gone (its result file names its run directory): its
    #: scenario and its number among that scenario's runs; 0 before the first
    scenario: str = ""
    repeat: int = 0
    elapsed_s: float = 0.0  # converge and runs
    #: the console's prefix column: as wide as the batch's longest `mode/case`
    width: int = 21
    #: whether its converge had started: a lab not yet begun has nothing to keep
    began: bool = False
    #: a cluster's: the playbook log of each (scenario, repeat) it ran
    logs: dict[tuple[str, int], Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The lab: its mode and what it runs."""
        return f"{self.mode}/{'+'.join(self.scenarios)}"

    @property
    def now(self) -> str:
        """What it runs now (or last ran): the prefix of its runs' lines."""
        return f"{self.mode}/{self.scenario or self.scenarios[0]}"

    def result_file(self, scenario: str, repeat: int) -> Path:
        return self.lab_dir / f"result-{scenario}-{repeat}.json"

    def runner_log(self, scenario: str, repeat: int) -> Path:
        """The run's output: the local runner's, or the cluster playbook's it ran in."""
        if self.target.is_cluster:
            return self.logs.get((scenario, repeat), self.lab_dir / "runs-1.log")
        return self.lab_dir / f"runner-{scenario}-{repeat}.log"

    def last_result(self) -> dict[str, Any] | None:
        return read_result(self.result_file(self.scenario, self.repeat)) if self.repeat else None

    @property
    def log_path(self) -> Path:
        """The converge playbook's output."""
        return self.lab_dir / "ansible.log"


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


async def start_playbook(
    playbook: str, extra_vars: dict[str, object], log: IO[bytes], inventory: Path | None = None
) -> asyncio.subprocess.Process:
    """targets.playbook_argv's command from the checkout (`inventory` None: ansible.cfg's,
    the local lab's), output to `log`, in a process group of its own: Ctrl-C reaches it
    through us, so that we can wait for its cleanup and then make sure nothing of the
    lab is left."""
    return await asyncio.create_subprocess_exec(
        *targets.playbook_argv(inventory, playbook, extra_vars),
        cwd=CHECKOUT,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


async def start_child(run: LabRun, argv: list[str]) -> asyncio.StreamReader:
    """A lab's runner (or a cluster mode's playbook) from the checkout, its output piped
    back to be streamed, in a process group of its own: stop_runs signals it, once,
    however the command was stopped. Its process is `run.proc`."""
    run.proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=CHECKOUT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert run.proc.stdout is not None
    return run.proc.stdout


def shared_manifests_dir(profile: str) -> Path:
    """Where `make experiment` renders every mode's manifests once for all its labs."""
    return CHECKOUT / ".lab" / f"manifests-{profile}"


async def render_shared_manifests(profile: str) -> Path:
    """Every mode's manifests for `profile`, rendered once by the manifests role (one
    playbook run, instead of one render per lab: under 8 labs on 2 cores each render
    was seconds of CPU the others waited for). RuntimeError with the log's end on a
    failure; on cancellation the playbook is stopped before this returns."""
    dest = shared_manifests_dir(profile)
    log_path = CHECKOUT / ".lab" / f"render-{profile}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = await start_playbook(
            "playbooks/render-manifests.yml",
            {"timing_profile": profile, "manifests_dir": dest},
            log,
        )
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            await proc.wait()
            raise
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"rendering the manifests failed (exit {code}, {log_path}):\n{tail}")
    return dest


@dataclass(frozen=True)
class Batch:
    """What every lab of one `make experiment` shares."""

    profile: str
    repeats: int
    artifacts: Path | None
    #: every mode's manifests, rendered once; None: each lab renders its own (it must,
    #: with timing overrides: a shared folder cannot carry them)
    manifests: Path | None
    timing_overrides: dict[str, float]
    #: registry.CLIENT_RETRIES: what every run's client does with a failed request
    client_retry: str
    #: labs that may run at once; the others wait for a slot
    slots: asyncio.Semaphore


async def converge_lab(run: LabRun, batch: Batch) -> list[str]:
    """run-experiment.yml with `experiment_converge_only`: the lab's HAProxy provisioned
    and running, the runner's command (runner.json) written, for any scenario (each run
    adds its own `--scenario`). Returns that command; LabFailed with the log's end when
    the playbook fails."""
    argv_file = run.lab_dir / RUNNER_ARGV
    argv_file.unlink(missing_ok=True)
    extra: dict[str, object] = {
        "mode": run.mode,
        "lab_index": run.index,
        "timing_profile": batch.profile,
        "experiment_converge_only": True,
        "client_retry": batch.client_retry,
        # the lab's HAProxy speaks its scenarios' protocol to the gateways (lab_plan)
        "scenario": run.scenarios[0],
    }
    if batch.manifests:
        extra["experiment_manifests"] = batch.manifests
    if batch.timing_overrides:
        extra["timing_overrides"] = batch.timing_overrides
    if batch.artifacts:
        extra["experiment_artifacts"] = batch.artifacts
    with run.log_path.open("wb") as log:
        run.proc = await start_playbook("playbooks/run-experiment.yml", extra, log)
        code = await run.proc.wait()
    run.proc = None
    if code != 0 or not argv_file.exists():
        raise LabFailed(f"converging the lab failed (exit {code}):\n{log_tail(run.log_path)}")
    argv = json.loads(argv_file.read_text())
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise LabFailed(f"{argv_file} is not a command (a list of strings)")
    return argv


async def run_repeat(
    run: LabRun, argv: list[str], scenario: str, repeat: int
) -> tuple[int, dict[str, Any] | None]:
    """One run of the local lab's runner in `scenario` as a child, its output streamed to
    the console (the mode and scenario in front) and to its runner log: (exit code,
    result)."""
    result_file = run.result_file(scenario, repeat)
    run.scenario, run.repeat = scenario, repeat
    result_file.unlink(missing_ok=True)
    stdout = await start_child(run, [*argv, *targets.run_args(scenario, result_file)])
    console = targets.Console(run.target)
    with run.runner_log(scenario, repeat).open("wb") as log:
        async for raw in stdout:
            log.write(raw)
            for shown in console.shown(raw.decode(errors="replace").rstrip("\n")):
                print(f"[{run.now:>{run.width}}] {shown}", flush=True)
    code = await run.proc.wait()
    run.proc = None
    return code, read_result(result_file)


def show_verdict(run: LabRun, scenario: str, repeat: int) -> None:
    """A cluster run's verdict on the console, from its summary (the local runner
    prints its own; a cluster's is in the playbook's output)."""
    result = read_result(run.result_file(scenario, repeat))
    if result is None:
        return
    with contextlib.suppress(OSError, ValueError, KeyError):
        summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
        print(f"[{run.now:>{run.width}}] == {verdict(summary)}", flush=True)


async def run_cluster_runs(
    run: LabRun, argv: list[str], wanted: list[tuple[str, int]], number: int
) -> tuple[int, list[dict[str, Any] | None]]:
    """One run-experiment.yml for a cluster mode's `wanted` runs ((scenario, its number
    among that scenario's runs), in order): the mode flipped once, then each run. Its
    output streamed to the console (each run's start and verdict) and to
    `runs-<number>.log`. (exit code, each run's result: None, it never started)."""
    log_path = run.lab_dir / f"runs-{number}.log"
    for key in wanted:
        run.result_file(*key).unlink(missing_ok=True)
        run.logs[key] = log_path
    run.scenario, run.repeat = wanted[0]
    runs = targets.cluster_runs_args([(sc, run.result_file(sc, n)) for sc, n in wanted])
    stdout = await start_child(run, [*argv, *runs])
    console = targets.Console(run.target)
    going: int | None = None
    with log_path.open("wb") as log:
        async for raw in stdout:
            log.write(raw)
            line = raw.decode(errors="replace").rstrip("\n")
            started = targets.run_started(line)
            if started is not None and 1 <= started <= len(wanted):
                if going is not None:
                    show_verdict(run, *wanted[going - 1])
                going = started
                run.scenario, run.repeat = wanted[started - 1]
            for shown in console.shown(line):
                print(f"[{run.now:>{run.width}}] {shown}", flush=True)
    code = await run.proc.wait()
    run.proc = None
    if going is not None:
        show_verdict(run, *wanted[going - 1])
    return code, [read_result(run.result_file(sc, n)) for sc, n in wanted]


def completed(result: dict[str, Any] | None) -> bool:
    return result is not None and result["status"] == "completed"


def runs_wanted(
    scenarios: tuple[str, ...], repeats: int, ran: dict[str, int], settled: dict[str, int]
) -> list[tuple[str, int]]:
    """The next runs of a cluster mode, in order, as (scenario, its number): each
    scenario's until `repeats` are settled (valid, or failed), no more than
    MAX_REPLACEMENTS beyond `repeats` in all."""
    wanted = []
    for sc in scenarios:
        room = min(repeats - settled[sc], repeats + MAX_REPLACEMENTS - ran[sc])
        wanted += [(sc, ran[sc] + k) for k in range(1, room + 1)]
    return wanted


#: What became of each run a cluster playbook was given.
RAN, FAILED, NOT_REACHED = "ran", "failed", "not reached"


def runs_fate(code: int, results: list[dict[str, Any] | None]) -> list[str]:
    """Each run's fate, from the playbook's exit code and the runs' results in order
    (None: it never started): a run that completed RAN; on a failure the first run not
    completed (else the last that started) FAILED, and those after it were NOT_REACHED,
    or FAILED with it when none of the runs had started (the flip failed)."""
    if code == 0:
        return [RAN if completed(r) else FAILED for r in results]
    started = [i for i, r in enumerate(results) if r is not None]
    culprit = next((i for i, r in enumerate(results) if not completed(r)), max(started, default=0))
    after = NOT_REACHED if started else FAILED
    return [RAN if i < culprit else FAILED if i == culprit else after for i in range(len(results))]


async def run_cluster_mode(run: LabRun, batch: Batch, argv: list[str]) -> list[Outcome]:
    """A cluster mode's runs: every scenario's repeats in one run-experiment.yml (one
    flip: a flip's rollout is about 30 s on onebox, and Ansible's setup of a playbook
    about as much again), then, for the invalid or unreached ones, another (runs_wanted,
    runs_fate)."""
    out: list[Outcome] = []
    number = 0
    # one playbook's HAProxy config serves its runs: a protocol to the gateways apiece
    for scenarios in by_lb_protocol(run.scenarios):
        number = await run_cluster_group(run, batch, argv, scenarios, number, out)
    return out


async def run_cluster_group(
    run: LabRun,
    batch: Batch,
    argv: list[str],
    scenarios: tuple[str, ...],
    number: int,
    out: list[Outcome],
) -> int:
    """run_cluster_mode's runs of `scenarios` (one protocol to the gateways), their
    outcomes added to `out`; returns the last playbook's number."""
    repeats = batch.repeats
    ran = dict.fromkeys(scenarios, 0)
    settled = dict.fromkeys(scenarios, 0)
    while wanted := runs_wanted(scenarios, repeats, ran, settled):
        number += 1
        code, results = await run_cluster_runs(run, argv, wanted, number)
        for (sc, n), result, fate in zip(wanted, results, runs_fate(code, results), strict=True):
            if fate == NOT_REACHED:
                continue  # the next playbook runs it under this number
            ran[sc] = n
            if fate == FAILED:  # an error, reported as such, not replaced
                out.append((sc, code or 1, result))
                settled[sc] += 1
                continue
            assert result is not None
            out.append((sc, 0, result))
            if is_valid(Path(result["run_dir"])):
                settled[sc] += 1
                continue
            more = n < repeats + MAX_REPLACEMENTS
            print(
                f"[{f'{run.mode}/{sc}':>{run.width}}] run {n} invalid, kept in "
                f"{result['run_dir']}; "
                + ("another takes its place" if more else "no more replacements"),
                flush=True,
            )
    return number


async def stop_runs(runs: list[LabRun]) -> None:
    """The one cleanup of an interrupted `make experiment`: SIGINT once to what runs for
    each lab (its converge playbook or its runner, each in a session of its own), wait
    for their own cleanup (a runner finalizes its artifacts and stops its pods), kill
    what is still there after CLEANUP_TIMEOUT_S, the pods of a killed runner included,
    then stop every lab's HAProxy."""
    running = [(r, r.proc) for r in runs if r.proc is not None and r.proc.returncode is None]
    for _, proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
    if running:
        await asyncio.wait(
            [asyncio.ensure_future(proc.wait()) for _, proc in running],
            timeout=CLEANUP_TIMEOUT_S,
        )
    for r, proc in running:
        if proc.returncode is not None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        result = r.last_result()
        local = not r.target.is_cluster
        killed = kill_leftover_pods(Path(result["run_dir"])) if result and local else []
        print(
            f"runbook.runners.all: [{r.now}] did not finish its cleanup in {CLEANUP_TIMEOUT_S} s; "
            f"killed it" + (f" and {len(killed)} pod processes" if local else ""),
            file=sys.stderr,
        )
    for target in {r.target for r in runs if r.target.is_cluster}:
        await stop_cluster_collectors(target)
    for r in runs:
        if r.target.is_cluster:
            await finalize_interrupted(r)
        else:
            stop_lab_haproxy(r.lab_dir)


async def stop_cluster_collectors(target: Target) -> None:
    """An interrupted cluster run leaves each worker's HAProxy collector running (an
    async job of the playbook that was stopped): stop them."""
    log_path = CHECKOUT / ".lab" / target.name / "stop.log"
    with log_path.open("wb") as log:
        proc = await start_playbook(
            "playbooks/experiment-homelab-stop.yml", {}, log, target.inventory
        )
        try:
            code = await asyncio.wait_for(proc.wait(), CLEANUP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = await proc.wait()
    if code != 0:
        print(
            f"runbook.runners.all: stopping the workers' HAProxy collectors failed "
            f"(exit {code}): {log_tail(log_path, 10)}",
            file=sys.stderr,
        )


async def finalize_interrupted(run: LabRun) -> None:
    """A cluster run stopped before its finalize: what it recorded, finalized as
    `interrupted` (the workers' HAProxy files are not fetched)."""
    result = run.last_result()
    if result is None or result["status"] != "running":
        return
    run_dir = Path(result["run_dir"])
    if not (run_dir / "plan.json").exists():
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "runbook.analysis.finalize", f"--run-dir={run_dir}", "--status=interrupted"),
        f"--target={targets.CLUSTER_KIND}",
        f"--result-file={run.result_file(run.scenario, run.repeat)}",
        cwd=CHECKOUT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await proc.wait()


async def converge_for_runs(run: LabRun, batch: Batch) -> list[str] | None:
    """Converge the lab: its runner's command, or None when the converge failed (said
    on stderr, the lab's HAProxy stopped). Every lab at once: no run measures yet, and
    the converges overlap their waits on Ansible's forks."""
    run.began = True
    run.lab_dir.mkdir(parents=True, exist_ok=True)
    for old in [*run.lab_dir.glob("result-*.json"), *run.lab_dir.glob("runner-*.log")]:
        old.unlink()
    started = time.monotonic()
    try:
        return await converge_lab(run, batch)
    except LabFailed as exc:
        stop_lab_haproxy(run.lab_dir)
        print(f"\n[{run.name}] {exc}", file=sys.stderr)
        return None
    finally:
        run.elapsed_s += time.monotonic() - started


#: A run's outcome: its scenario, the runner's exit code, its result (None: it never ran).
Outcome = tuple[str, int, dict[str, Any] | None]


async def run_lab(
    run: LabRun, batch: Batch, argv: list[str] | None, start_after_s: float = 0
) -> list[Outcome]:
    """Once a slot is free (batch.slots), run the converged lab's scenarios one after
    the other, each until `batch.repeats` of its runs are valid
    (runbook.analysis.validity): an invalid run is kept and shown, and another takes its
    place, at most MAX_REPLACEMENTS of them per scenario. The lab's HAProxy is stopped
    when its runs end (stop_runs does it on an interrupt)."""
    repeats = batch.repeats
    if argv is None:  # its converge failed, said then
        return [(sc, 1, None) for sc in run.scenarios for _ in range(repeats)]
    out: list[Outcome] = []
    async with batch.slots:
        await asyncio.sleep(start_after_s)
        started = time.monotonic()
        if run.target.is_cluster:
            out = await run_cluster_mode(run, batch, argv)
            run.elapsed_s += time.monotonic() - started
            return out
        for scenario in run.scenarios:
            ran = valid = 0
            while valid < repeats and ran < repeats + MAX_REPLACEMENTS:
                ran += 1
                code, result = await run_repeat(run, argv, scenario, ran)
                out.append((scenario, code, result))
                if code != 0 or result is None or result["status"] != "completed":
                    valid += 1  # a failed run is an error, reported as such, not replaced
                elif is_valid(Path(result["run_dir"])):
                    valid += 1
                else:
                    print(
                        f"[{run.now:>{run.width}}] run {ran} invalid, kept in {result['run_dir']}; "
                        + (
                            "another takes its place"
                            if ran < repeats + MAX_REPLACEMENTS
                            else "no more replacements"
                        ),
                        flush=True,
                    )
        stop_lab_haproxy(run.lab_dir)
        run.elapsed_s += time.monotonic() - started
    return out


async def converge_cluster(runs: list[LabRun], batch: Batch) -> list[list[str] | None]:
    """site.yml on the cluster, once for every mode's runs (a second run changes
    nothing); then each mode's command (run-experiment.yml for the mode; each run adds
    its scenario and result file). None for every mode when site.yml failed (said)."""
    target = runs[0].target
    for r in runs:
        r.began = True
        r.lab_dir.mkdir(parents=True, exist_ok=True)
        for old in [*r.lab_dir.glob("result-*.json"), *r.lab_dir.glob("runs-*.log")]:
            old.unlink()
    common: dict[str, object] = {
        "timing_profile": batch.profile,
        "client_retry": batch.client_retry,
    }
    if batch.timing_overrides:
        common["timing_overrides"] = batch.timing_overrides
    log_path = runs[0].lab_dir.parent / "site.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = await start_playbook("site.yml", common, log, target.inventory)
        runs[0].proc = proc  # stop_runs signals it on an interrupt
        code = await proc.wait()
    runs[0].proc = None
    runs[0].elapsed_s += time.monotonic() - started
    if code != 0:
        print(
            f"\n[{target.name}] site.yml failed (exit {code}), no run started; the last "
            f"lines of {log_path}:\n{log_tail(log_path)}",
            file=sys.stderr,
        )
        return [None for _ in runs]
    if batch.artifacts:
        common["experiment_artifacts"] = batch.artifacts
    return [
        targets.playbook_argv(
            target.inventory, "playbooks/run-experiment.yml", {"mode": r.mode, **common}
        )
        for r in runs
    ]


def is_valid(run_dir: Path) -> bool:
    """What the run's summary says of its lab (no summary: it measured nothing)."""
    try:
        return bool(json.loads((run_dir / "summary.json").read_text()).get("valid", True))
    except (OSError, ValueError):
        return False


def run_durations(run_dirs: list[Path]) -> list[float]:
    """Each completed run's own duration, from its journal (bring-up to finalize)."""
    out = []
    for d in run_dirs:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            out.append(float(json.loads((d / "journal.json").read_text())["duration_s"]))
    return out


async def main_async(
    target: Target,
    modes: list[str],
    scenarios: list[str],
    plan: list[tuple[str, tuple[str, ...]]],
    first_index: int,
    labs_at_once: int,
    batch_args: dict[str, Any],
    stopped_by: list[signal.Signals],
) -> int:
    """`plan`: lab_plan's labs, from `first_index` on (a cluster's: one per mode, run
    one at a time); `batch_args`: Batch's fields but manifests and slots."""
    # SIGINT, SIGTERM and SIGHUP alike: every run below is stopped and cleaned up
    # before this returns, and the checkout's lock is held until then
    cancel_on_exit_signals(stopped_by, "runbook.runners.all")
    started = time.monotonic()
    cluster = target.is_cluster
    runs = [
        LabRun(target, m, scs, 0, CHECKOUT / ".lab" / target.name / m)
        if cluster
        else LabRun(target, m, scs, first_index + i, CHECKOUT / ".lab" / str(first_index + i))
        for i, (m, scs) in enumerate(plan)
    ]
    width = max((len(f"{r.mode}/{sc}") for r in runs for sc in r.scenarios), default=0)
    for r in runs:
        r.width = width
    profile = batch_args["profile"]
    manifests = None
    if not batch_args["timing_overrides"] and not cluster:
        print(f"rendering every mode's manifests once ({profile} profile) ...", flush=True)
        try:
            manifests = await render_shared_manifests(profile)
        except RuntimeError as exc:
            print(f"runbook.runners.all: {exc}", file=sys.stderr)
            return 1
        print(f"manifests in {manifests} ({time.monotonic() - started:.1f}s)", flush=True)
    batch = Batch(**batch_args, manifests=manifests, slots=asyncio.Semaphore(labs_at_once))
    repeats = batch.repeats
    if cluster:
        print(
            f"{target.name}: one cluster, its {len(runs)} modes one after the other "
            f"({profile} profile)",
            flush=True,
        )
    else:
        print(
            f"{len(runs)} labs, {labs_at_once} at once on {usable_cpus()} CPUs "
            f"({LABS_PER_CPU} per CPU unless --labs-at-once says otherwise)",
            flush=True,
        )
    tasks: list[asyncio.Task[Any]] = []
    try:
        if cluster:
            print(f"converging {target.name} (site.yml) ...", flush=True)
            tasks = [asyncio.create_task(converge_cluster(runs, batch))]
            (argvs,) = await asyncio.gather(*tasks)
            print(f"{target.name} converged ({time.monotonic() - started:.1f}s)", flush=True)
        else:
            # every lab converged before any run starts: Ansible's CPU is spent before a
            # run measures anything, not while another lab's health checks need it
            print(f"converging {len(runs)} labs ...", flush=True)
            tasks = [asyncio.create_task(converge_for_runs(r, batch)) for r in runs]
            argvs = await asyncio.gather(*tasks)
            print(f"labs converged ({time.monotonic() - started:.1f}s)", flush=True)
        # the first wave starts staggered; a later lab starts when a slot frees, which
        # staggers it by itself
        tasks = [
            asyncio.create_task(
                run_lab(r, batch, argv, i * LAB_STAGGER_S if i < labs_at_once else 0)
            )
            for i, (r, argv) in enumerate(zip(runs, argvs, strict=True))
        ]
        outcomes = await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        # the labs' tasks are cancelled with us; their children are stopped here
        if tasks:
            await asyncio.wait(tasks)
        await stop_runs(runs)
        for r in runs:
            result = r.last_result()
            if result:
                where = result["run_dir"]
            elif r.repeat:
                where = f"none recorded (see {r.runner_log(r.scenario, r.repeat)})"
            elif r.began:
                where = f"none: no run had started (its converge: {r.log_path})"
            else:
                where = "none: it had not started"
            print(f"[{r.now}] interrupted: artifacts kept in {where}", file=sys.stderr)
        raise
    done: dict[str, dict[str, list[Path]]] = {}
    failed = False
    for r, results in zip(runs, outcomes, strict=True):
        numbers: dict[str, int] = {}
        for sc, code, result in results:
            i = numbers[sc] = numbers.get(sc, 0) + 1
            if code == 0 and result is not None and result["status"] == "completed":
                done.setdefault(sc, {}).setdefault(r.mode, []).append(
                    Path(result["run_dir"]).resolve()
                )
                continue
            failed = True
            if result is not None and result.get("reason"):
                print(
                    f"\n[{r.mode}/{sc}] run {i} of {repeats} failed: {result['reason']} "
                    f"(its artifacts: {result['run_dir']})",
                    file=sys.stderr,
                )
            elif r.runner_log(sc, i).exists():  # else the converge failed, said above
                log = r.runner_log(sc, i)
                print(
                    f"\n[{r.mode}/{sc}] run {i} of {repeats} failed (exit {code}); "
                    f"the last lines of {log}:\n{log_tail(log)}",
                    file=sys.stderr,
                )
    all_runs = [d for by_mode in done.values() for dirs in by_mode.values() for d in dirs]
    timing = timing_summary(
        time.monotonic() - started,
        {
            r.name: (
                r.elapsed_s,
                run_durations(
                    [
                        Path(result["run_dir"]).resolve()
                        for _, code, result in results
                        if code == 0 and result is not None and result["status"] == "completed"
                    ]
                ),
            )
            for r, results in zip(runs, outcomes, strict=True)
        },
    )
    if all_runs:
        stamp = utc_stamp()
        folder = all_runs[0].parent
        doc = comparison_doc(
            summaries_by_pair(all_runs),
            repeats,
            batch.profile,
            labs_at_once,
            usable_cpus(),
            timing,
            lab=target.name,
        )
        table, page = write_comparison(all_runs, folder / f"comparison-{stamp}.html", doc)
        write_json(folder / f"comparison-{stamp}.json", doc)
        print("\n" + table)
        print("\nover the repeats:")
        for sc, cmp_ in doc["scenarios"].items():
            for mode, m in cmp_["modes"].items():
                print(f"  {mode:>12} {sc:>8}: {m['verdict']}")
        invalid = invalid_runs(doc["scenarios"])
        if invalid:
            print(f"\n{len(invalid)} invalid run(s), shown, not counted:")
            for mode, sc, bad in invalid:
                print(f"  {mode:>12} {sc:>8}: {bad['run']}: {'; '.join(bad['reasons'])}")
        print(f"\ncomparison report: {page}")
        print(f"comparison data:   {folder / f'comparison-{stamp}.json'}")
        local = latest_comparison(folder, targets.LOCAL) if cluster else None
        if local is not None:
            # the same question asked of both labs: their verdicts side by side
            both = write_side_by_side(
                local, folder / f"comparison-{stamp}.json", folder / f"labs-{stamp}.html"
            )
            print(f"both labs:         {both} (the local lab's: {local.name})")
    print(f"{len(modes)} modes x {len(scenarios)} scenarios and events, {repeats} run(s) each")
    print(timing_line(timing, target.name if cluster else None))
    return 1 if failed else 0


def timing_overrides(text: str, profile: str) -> dict[str, float]:
    """--timing-overrides, checked by the timing model as the timing role would: an
    unknown input, a bad number or a broken rule is a ValueError naming it."""
    try:
        overrides = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--timing-overrides {text!r} is not JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--timing-overrides {text!r} must be a JSON object of inputs")
    if overrides:
        broken = timing.report(profile, overrides)["violations"]
        if broken:
            rules = " ".join(f"[{v['rule']}] {v['message']}." for v in broken)
            raise ValueError(f"--timing-overrides {text} breaks the timing model: {rules}")
    return overrides


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        default=targets.LOCAL,
        help="an inventory: local (default: labs on this machine) or a cluster's (onebox, homelab)",
    )
    parser.add_argument(
        "--cluster-lock",
        type=Path,
        help="a lock file held for the whole command (make: onebox's, as make onebox takes)",
    )
    parser.add_argument("--modes", default=",".join(registry.MODES))
    parser.add_argument("--profile", help="the timing profile (default: the target inventory's)")
    parser.add_argument("--scenarios", default=",".join(registry.DEFAULT_SCENARIOS))
    parser.add_argument(
        "--events",
        default=registry.DEFAULT_EVENT,
        help=f"what terminates the gateway pod, each run under each scenario: "
        f"{', '.join(registry.EVENTS)} (runbook.model.registry; the local lab runs "
        f"{', '.join(registry.LOCAL_EVENTS)})",
    )
    parser.add_argument("--first-lab-index", type=int, help="the local lab's first (default 1)")
    parser.add_argument(
        "--client-retry",
        default="none",
        help=f"what each run's client does with a failed request: "
        f"{', '.join(registry.CLIENT_RETRIES)} (runbook.model.registry)",
    )
    parser.add_argument("--artifacts", help="default: the inventory's (artifacts/)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each mode, one after the other (1..20)"
    )
    parser.add_argument(
        "--labs-at-once",
        type=int,
        help=f"labs that run side by side (default: {LABS_PER_CPU} per usable CPU)",
    )
    parser.add_argument(
        "--timing-overrides",
        default="{}",
        help="timing model inputs as JSON, e.g. '{\"haproxy_check_timeout_s\": 0.25}': "
        "checked by the model before anything starts; each lab renders its own manifests",
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    scenarios = [sc for sc in args.scenarios.split(",") if sc]
    events = [ev for ev in args.events.split(",") if ev]
    if not (CHECKOUT / "playbooks" / "run-experiment.yml").exists():
        print(
            f"runbook.runners.all: {CHECKOUT} is not a checkout of the project (no playbooks/): "
            "run it from a checkout set up by `make setup`",
            file=sys.stderr,
        )
        return 2
    try:
        target = targets.target_for(args.target, CHECKOUT)
        if target.is_cluster and args.first_lab_index is not None:
            raise ValueError(
                f"--first-lab-index {args.first_lab_index} is the local lab's: "
                f"--target {target.name} is one cluster, with no lab index"
            )
        if target.is_cluster and args.labs_at_once not in (None, 1):
            raise ValueError(
                f"--labs-at-once {args.labs_at_once}: --target {target.name} is one cluster, "
                "its modes run one at a time (1)"
            )
        first_index = 1 if args.first_lab_index is None else args.first_lab_index
        profile = args.profile or target.profile
        if not modes:
            raise ValueError("--modes names no mode")
        if not scenarios:
            raise ValueError("--scenarios names no scenario")
        if not events:
            raise ValueError("--events names no event")
        for ev in events:
            registry.event_on(ev, "cluster" if target.is_cluster else targets.LOCAL)
        registry.require("client retry", args.client_retry, registry.CLIENT_RETRIES)
        if args.artifacts == "":
            raise ValueError("--artifacts is empty: name a folder (default: artifacts/)")
        if not 1 <= args.repeats <= 20:
            raise ValueError(f"--repeats {args.repeats} must be 1..20")
        for mode in modes:
            for sc in scenarios:
                check_inputs(mode, sc, profile, args.client_retry)
        alone = [sc for sc in scenarios if registry.scenario(sc).alone]
        # from here on a scenario is a case: the scenario under an event (steady@drain)
        scenarios = [registry.case(sc, ev) for sc in scenarios for ev in events]
        pairs = len(modes) * len(scenarios)
        if alone and args.labs_at_once not in (None, 1):
            raise ValueError(
                f"--labs-at-once {args.labs_at_once}: scenario {alone[0]} takes the "
                "machine's CPUs alone, one lab at a time (1); run it apart from the others "
                "to keep theirs at once"
            )
        if target.is_cluster or alone:
            labs_at_once = 1
        elif args.labs_at_once is None:
            labs_at_once = default_labs_at_once(pairs, usable_cpus())
        else:
            labs_at_once = args.labs_at_once
        if not 1 <= labs_at_once <= pairs:
            raise ValueError(
                f"--labs-at-once {args.labs_at_once} must be 1..{pairs} (the labs asked)"
            )
        # a cluster (one slot): a lab per mode, all its scenarios, one at a time
        plan = lab_plan(modes, scenarios, labs_at_once)
        last = first_index + len(plan) - 1
        if not target.is_cluster and (first_index < 1 or last > MAX_LAB_INDEX):
            raise ValueError(
                f"--first-lab-index {first_index} must be "
                f"1..{MAX_LAB_INDEX - len(plan) + 1} for {len(plan)} lab(s): labs are "
                f"1..{MAX_LAB_INDEX} (loopback 127.(30+N))"
            )
        overrides = timing_overrides(args.timing_overrides, profile)
    except ValueError as exc:
        print(f"runbook.runners.all: {exc}", file=sys.stderr)
        return 2
    try:
        where = f"{target.name}:" if target.is_cluster else ""
        lock = take_lock(
            CHECKOUT / ".lab" / "experiment.lock",
            [f"{where}{m}/{'+'.join(scs)}" for m, scs in plan],
            first_index,
        )
    except Busy as exc:
        print(
            f"runbook.runners.all: another experiment is running in this checkout: {exc}; "
            "wait for it to end, or stop it with Ctrl-C in its terminal",
            file=sys.stderr,
        )
        return 1
    if args.cluster_lock:
        try:
            cluster_lock = hold(
                args.cluster_lock, {"pid": os.getpid(), "command": "make experiment"}
            )
        except LockHeld as held:
            lock.close()
            print(
                f"runbook.runners.all: another command holds {args.cluster_lock} ({held}); "
                "wait for it to end",
                file=sys.stderr,
            )
            return 1
        lock_files = [cluster_lock]
    else:
        lock_files = []
    # the labs' addresses are the machine's: another checkout's command on one of
    # them is refused here, naming it (runbook.localcluster.lablock)
    indices = [] if target.is_cluster else list(range(first_index, first_index + len(plan)))
    try:
        lab_locks = claim_all(indices, "make experiment (runbook.runners.all)")
    except LabBusy as exc:
        lock.close()
        for f in lock_files:
            f.close()
        print(
            f"runbook.runners.all: {exc}; wait for it to end, or move these labs off it "
            f"(FIRST_LAB=, now {first_index})",
            file=sys.stderr,
        )
        return 1
    stopped_by: list[signal.Signals] = []
    try:
        return asyncio.run(
            main_async(
                target,
                modes,
                scenarios,
                plan,
                first_index,
                min(labs_at_once, len(plan)),
                {
                    "profile": profile,
                    "repeats": args.repeats,
                    "artifacts": Path(args.artifacts).resolve() if args.artifacts else None,
                    "timing_overrides": overrides,
                    "client_retry": args.client_retry,
                },
                stopped_by,
            )
        )
    except asyncio.CancelledError:  # an exit signal: every run stopped, artifacts kept
        return exit_code(stopped_by)
    finally:
        for f in [*lab_locks, *lock_files]:
            f.close()
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
