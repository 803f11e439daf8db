"""`make experiment`: every mode in every scenario on the local lab, side by side, then
one comparison.

Each (scenario, mode) pair runs `playbooks/run-experiment.yml` once in its own isolated
lab (its own loopback /16, ports and files). Every mode's manifests are rendered once
for all the labs (`.lab/manifests-<profile>`); each lab converges its HAProxy once, then
its repeats run one after the other, so the whole command takes about as long as its
longest lab.
Each run writes `.lab/<N>/result-<repeat>.json` (where its artifacts are, how it
ended), which is what this reads.

One `make experiment` at a time per checkout: a second one, started while the first
runs, is refused at once with a message naming the first (it would take the same labs:
addresses, ports, pidfiles). The lock is `.lab/experiment.lock`, released by the
kernel when its holder exits, however it exits.

Ctrl-C (SIGINT to the whole process group, as a terminal sends it), SIGTERM (a CI
timeout, `timeout(1)`, systemd) and SIGHUP (a closing terminal) stop every run alike
(lab.runners.signals): each keeps what it recorded and its journal says `interrupted`;
then every lab process is gone, HAProxy included, one line per run says where its
artifacts are, and only then does the command exit (128 + the signal's number).

    python -m lab.runners.all [--modes current,ordered] [--scenarios steady] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..analysis.comparison import compare, timing_line, timing_summary
from ..analysis.report import write_comparison
from ..artifacts.rundir import read_result, utc_stamp, write_json
from ..localcluster.cluster import kill_leftover_pods
from ..model import registry
from ..model.plan import check_inputs
from .signals import cancel_on_exit_signals, exit_code

ROOT = Path.cwd()
#: How long an interrupted run may take to write its artifacts before it is killed.
CLEANUP_TIMEOUT_S = 60
#: Labs start this far apart: on two cores, eight labs booting their pods at the same
#: instant starve each other's health checks (HAProxy's 0.5 s check timeout in the
#: quick profile) and HAProxy marks healthy gateways DOWN before the termination.
LAB_STAGGER_S = 2.5
#: Each repeat's result file in its lab; the playbook puts the repeat's number for @N@.
RESULT_FILE = "result-@N@.json"


class Busy(RuntimeError):
    """Another `make experiment` holds this checkout's labs."""


def take_lock(path: Path, labs: list[str], first_index: int) -> IO[str]:
    """The checkout's experiment lock, or Busy naming its holder. Keep the returned file
    open for as long as the labs are in use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "(no details)"
        f.close()
        raise Busy(holder) from None
    f.seek(0)
    f.truncate()
    f.write(
        json.dumps(
            {
                "pid": os.getpid(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "labs": dict(zip(range(first_index, first_index + len(labs)), labs, strict=True)),
            }
        )
        + "\n"
    )
    f.flush()
    return f


@dataclass
class LabRun:
    mode: str
    scenario: str
    index: int
    lab_dir: Path
    proc: asyncio.subprocess.Process | None = None
    elapsed_s: float = 0.0  # the playbook run's wall time, its repeats included

    @property
    def name(self) -> str:
        return f"{self.mode}/{self.scenario}"

    def result_file(self, repeat: int) -> Path:
        return self.lab_dir / RESULT_FILE.replace("@N@", str(repeat))

    def results(self) -> list[Path]:
        """The result files this lab's runs have written, in order."""
        return sorted(self.lab_dir.glob("result-*.json"), key=lambda p: int(p.stem.split("-")[1]))

    @property
    def log_path(self) -> Path:
        return self.lab_dir / "ansible.log"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_lab_haproxy(lab_dir: Path) -> None:
    """Stop the lab's HAProxy (the playbook's `always` step does this unless Ansible
    itself was interrupted). Only a process whose command line names this lab's config."""
    pidfile = lab_dir / "haproxy.pid"
    try:
        pids = [int(p) for p in pidfile.read_text().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(lab_dir / "haproxy.cfg").encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    pidfile.unlink(missing_ok=True)


async def start_playbook(
    playbook: str, extra_vars: dict[str, object], log: IO[bytes]
) -> asyncio.subprocess.Process:
    """`ansible-playbook <playbook> -e <extra vars as JSON>` from the checkout (JSON: a
    path with a space or an `=` stays one value), output to `log`, in a process group of
    its own: Ctrl-C reaches it through us, so that we can wait for its cleanup and then
    make sure nothing of the lab is left."""
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "ansible-playbook"),
        playbook,
        "-e",
        json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in extra_vars.items()}),
        cwd=ROOT,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


def shared_manifests_dir(profile: str) -> Path:
    """Where `make experiment` renders every mode's manifests once for all its labs."""
    return ROOT / ".lab" / f"manifests-{profile}"


async def render_shared_manifests(profile: str) -> Path:
    """Every mode's manifests for `profile`, rendered once by the manifests role (one
    playbook run, instead of one render per lab: under 8 labs on 2 cores each render
    was seconds of CPU the others waited for). RuntimeError with the log's end on a
    failure; on cancellation the playbook is stopped before this returns."""
    dest = shared_manifests_dir(profile)
    log_path = ROOT / ".lab" / f"render-{profile}.log"
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


async def run_mode(
    run: LabRun, profile: str, artifacts: Path | None, repeats: int, manifests: Path | None = None
) -> int:
    run.lab_dir.mkdir(parents=True, exist_ok=True)
    progress = run.lab_dir / "progress.log"
    progress.unlink(missing_ok=True)
    for old in run.results():
        old.unlink()
    with run.log_path.open("wb") as log:
        extra: dict[str, object] = {
            "mode": run.mode,
            "lab_index": run.index,
            "scenario": run.scenario,
            "experiment_profile": profile,
            "experiment_repeats": repeats,
            "experiment_result_file": run.lab_dir / RESULT_FILE,
        }
        if artifacts:
            extra["experiment_artifacts"] = artifacts
        if manifests:
            extra["experiment_manifests"] = manifests
        run.proc = await start_playbook("playbooks/run-experiment.yml", extra, log)
        shown = 0
        while run.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.proc.wait(), 0.5)
            if progress.exists():
                lines = progress.read_text().splitlines()
                for line in lines[shown:]:
                    print(f"[{run.name:>21}] {line}", flush=True)
                shown = len(lines)
    return run.proc.returncode or 0


def running_runner(result_file: Path) -> int | None:
    """The pid of the local runner still writing `result_file`, if it runs: Ansible
    starts a task's command in a session of its own, so the playbook's process group
    does not include it and the playbook can end while the runner still cleans up."""
    result = read_result(result_file)
    if result is None or result["status"] != "running" or "pid" not in result:
        return None
    pid = int(result["pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return pid if b"lab.runners.local" in cmdline and state != "Z" else None


async def stop_runs(runs: list[LabRun]) -> None:
    """SIGINT to each run's playbook and runner, wait for their cleanup, then leave
    nothing: what is still there after CLEANUP_TIMEOUT_S is killed, the pods of a killed
    runner included."""
    groups = [r.proc.pid for r in runs if r.proc is not None]
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGINT)
    # the runner takes a second SIGINT (Ansible passes one on too) as the same request
    runners = {f: pid for r in runs for f in r.results() if (pid := running_runner(f))}
    for pid in runners.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)

    def busy() -> bool:
        return any(_group_alive(g) for g in groups) or any(map(running_runner, runners))

    deadline = time.monotonic() + CLEANUP_TIMEOUT_S
    while busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    for result_file in runners:
        if (pid := running_runner(result_file)) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            result = read_result(result_file)
            if result is not None:
                killed = kill_leftover_pods(Path(result["run_dir"]))
                print(
                    f"lab.runners.all: the runner of {result['run_dir']} did not finish its "
                    f"cleanup in {CLEANUP_TIMEOUT_S} s; killed it and {len(killed)} pod "
                    "processes",
                    file=sys.stderr,
                )
    for r in runs:
        stop_lab_haproxy(r.lab_dir)


async def run_lab(
    run: LabRun,
    repeats: int,
    profile: str,
    artifacts: Path | None,
    start_after_s: float = 0,
    manifests: Path | None = None,
) -> list[tuple[int, dict[str, Any] | None]]:
    """The lab's mode and scenario, `repeats` times one after the other in one playbook
    run: (exit code, result) each; a repeat that never ran has no result."""
    await asyncio.sleep(start_after_s)
    started = time.monotonic()
    code = await run_mode(run, profile, artifacts, repeats, manifests)
    run.elapsed_s = time.monotonic() - started
    out = []
    for i in range(1, repeats + 1):
        result = read_result(run.result_file(i))
        ok = result is not None and result["status"] == "completed"
        out.append((0 if ok else (code or 1), result))
    return out


def run_durations(run_dirs: list[Path]) -> list[float]:
    """Each completed run's own duration, from its journal (bring-up to finalize)."""
    out = []
    for d in run_dirs:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            out.append(float(json.loads((d / "journal.json").read_text())["duration_s"]))
    return out


async def main_async(
    modes: list[str],
    profile: str,
    scenarios: list[str],
    first_index: int,
    artifacts: Path | None,
    repeats: int,
    stopped_by: list[signal.Signals],
) -> int:
    # SIGINT, SIGTERM and SIGHUP alike: every run below is stopped and cleaned up
    # before this returns, and the checkout's lock is held until then
    cancel_on_exit_signals(stopped_by, "lab.runners.all")
    started = time.monotonic()
    pairs = [(m, sc) for sc in scenarios for m in modes]
    runs = [
        LabRun(m, sc, first_index + i, ROOT / ".lab" / str(first_index + i))
        for i, (m, sc) in enumerate(pairs)
    ]
    print(f"rendering every mode's manifests once ({profile} profile) ...", flush=True)
    try:
        manifests = await render_shared_manifests(profile)
    except RuntimeError as exc:
        print(f"lab.runners.all: {exc}", file=sys.stderr)
        return 1
    print(f"manifests in {manifests} ({time.monotonic() - started:.1f}s)", flush=True)
    tasks = [
        asyncio.create_task(run_lab(r, repeats, profile, artifacts, i * LAB_STAGGER_S, manifests))
        for i, r in enumerate(runs)
    ]
    try:
        outcomes = await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        await stop_runs(runs)
        for r in runs:
            written = r.results()
            result = read_result(written[-1]) if written else None
            where = result["run_dir"] if result else f"none recorded (see {r.log_path})"
            print(f"[{r.name}] interrupted: artifacts kept in {where}", file=sys.stderr)
        raise
    finally:
        for t in tasks:
            t.cancel()
    done: dict[str, dict[str, list[Path]]] = {}
    failed = False
    for r, results in zip(runs, outcomes, strict=True):
        bad = [code for code, result in results if code != 0 or result is None]
        for code, result in results:
            if code == 0 and result is not None:
                done.setdefault(r.scenario, {}).setdefault(r.mode, []).append(
                    Path(result["run_dir"]).resolve()
                )
        if bad:
            # the lab's repeats share one playbook run, hence one log
            failed = True
            print(
                f"\n[{r.name}] {len(bad)} of {repeats} run(s) failed (exit {bad[0]}); "
                "the playbook's last lines:",
                file=sys.stderr,
            )
            lines = r.log_path.read_text(errors="replace").splitlines()
            print("\n".join(lines[-25:]), file=sys.stderr)
    all_runs = [d for by_mode in done.values() for dirs in by_mode.values() for d in dirs]
    timing = timing_summary(
        time.monotonic() - started,
        {
            r.name: (r.elapsed_s, run_durations(done.get(r.scenario, {}).get(r.mode, [])))
            for r in runs
        },
    )
    if all_runs:
        stamp = utc_stamp()
        folder = all_runs[0].parent
        table, page = write_comparison(all_runs, folder / f"comparison-{stamp}.html")
        doc = {
            "repeats": repeats,
            "profile": profile,
            "scenarios": {
                sc: compare(
                    {
                        m: [json.loads((d / "summary.json").read_text()) for d in dirs]
                        for m, dirs in by_mode.items()
                    }
                )
                for sc, by_mode in done.items()
            },
            "run_dirs": {
                sc: {m: [str(d) for d in dirs] for m, dirs in by_mode.items()}
                for sc, by_mode in done.items()
            },
            "timing": timing,
        }
        write_json(folder / f"comparison-{stamp}.json", doc)
        print("\n" + table)
        print("\nover the repeats:")
        for sc, cmp_ in doc["scenarios"].items():
            for mode, m in cmp_["modes"].items():
                print(f"  {mode:>12} {sc:>8}: {m['verdict']}")
        print(f"\ncomparison report: {page}")
        print(f"comparison data:   {folder / f'comparison-{stamp}.json'}")
    print(f"{len(modes)} modes x {len(scenarios)} scenarios, {repeats} run(s) each")
    print(timing_line(timing))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(registry.MODES))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--scenarios", default=",".join(registry.SCENARIOS))
    parser.add_argument("--first-lab-index", type=int, default=1)
    parser.add_argument("--artifacts", type=Path, help="default: the inventory's (artifacts/)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each mode, one after the other (1..20)"
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    scenarios = [sc for sc in args.scenarios.split(",") if sc]
    if not (ROOT / "playbooks" / "run-experiment.yml").exists():
        print(f"lab.runners.all: run it from the project's root, not {ROOT}", file=sys.stderr)
        return 2
    try:
        if not modes:
            raise ValueError("--modes names no mode")
        if not scenarios:
            raise ValueError("--scenarios names no scenario")
        if not 1 <= args.repeats <= 20:
            raise ValueError(f"--repeats {args.repeats} must be 1..20")
        for mode in modes:
            for sc in scenarios:
                check_inputs(mode, sc, args.profile)
    except ValueError as exc:
        print(f"lab.runners.all: {exc}", file=sys.stderr)
        return 2
    try:
        lock = take_lock(
            ROOT / ".lab" / "experiment.lock",
            [f"{m}/{sc}" for sc in scenarios for m in modes],
            args.first_lab_index,
        )
    except Busy as exc:
        print(
            f"lab.runners.all: another experiment is running in this checkout: {exc}; "
            "wait for it to end, or stop it with Ctrl-C in its terminal",
            file=sys.stderr,
        )
        return 1
    stopped_by: list[signal.Signals] = []
    try:
        return asyncio.run(
            main_async(
                modes,
                args.profile,
                scenarios,
                args.first_lab_index,
                args.artifacts.resolve() if args.artifacts else None,
                args.repeats,
                stopped_by,
            )
        )
    except asyncio.CancelledError:  # an exit signal: every run stopped, artifacts kept
        return exit_code(stopped_by)
    finally:
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
