"""Kubernetes' own conformance tests for what the experiment rests on, run on onebox.

    python -m runbook.onebox.conformance --e2e-test <cache>/bin/<kubernetes>/e2e.test \\
        --context onebox --report-dir <dir>

e2e.test is built from the same pinned module as the cluster (runbook.onebox.build). The
run is the suite's conformance tests (label `Conformance`) whose names match one of
FOCUS's groups: NodePort services, EndpointSlices, container lifecycle hooks, the
preStop hook and a pod's graceful removal. The suite writes its JUnit report into
the report folder; this module reads it back and writes `conformance.json` beside
it: every spec that ran, passed or failed, by group. Exit 0 only when every group
ran at least one spec and none failed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

#: The behaviours, each a regular expression over the e2e spec's full name.
FOCUS = {
    "nodeport": r"NodePort",
    "endpointslice": r"EndpointSlice",
    "lifecycle-hooks": r"Container Lifecycle Hook",
    "prestop": r"PreStop should call prestop when killing a pod",
    "graceful-removal": r"Pods should be submitted and removed",
}


SUITE_NODE = re.compile(r"\[(Synchronized)?(Report)?(Before|After)Suite\]")


@dataclass(frozen=True)
class Spec:
    name: str
    group: str
    state: str  # passed | failed
    seconds: float
    message: str = ""


def e2e_argv(e2e_test: Path, context: str, kubeconfig: Path, report_dir: Path) -> list[str]:
    return [
        str(e2e_test),
        f"--kubeconfig={kubeconfig}",
        f"--context={context}",
        # no cloud: the suite's provider-independent tests only
        "--provider=skeleton",
        f"--report-dir={report_dir}",
        # the dump scripts need a cluster/ checkout and SSH the suite does not have here
        "--disable-log-dump",
        "--dump-logs-on-failure=false",
        "--ginkgo.label-filter=Conformance",
        f"--ginkgo.focus={'|'.join(FOCUS.values())}",
        "--ginkgo.no-color",
        "--ginkgo.timeout=40m",
    ]


def group_of(name: str) -> str | None:
    return next((g for g, rx in FOCUS.items() if re.search(rx, name)), None)


def read_junit(path: Path) -> list[Spec]:
    """The specs that ran (the suite lists skipped ones too; they did not run)."""
    specs: list[Spec] = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("skipped") is not None:
            continue
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        # the suite's own nodes ([SynchronizedBeforeSuite], [ReportAfterSuite] ...)
        # count only when they fail: then nothing after them means anything
        if SUITE_NODE.match(name) and failure is None:
            continue
        group = group_of(name) or "suite"
        state = "failed" if failure is not None else "passed"
        message = (failure.get("message", "") if failure is not None else "")[:400]
        specs.append(Spec(name, group, state, float(case.get("time", "0")), message))
    return specs


def verdict(specs: list[Spec]) -> list[str]:
    """What is wrong with a run, in words; empty when it passed."""
    problems = [f"failed: {s.name}: {s.message}" for s in specs if s.state == "failed"]
    ran = {s.group for s in specs}
    problems += [f"no {g} spec ran (focus {FOCUS[g]!r})" for g in FOCUS if g not in ran]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--e2e-test", type=Path, required=True)
    parser.add_argument("--context", required=True)
    parser.add_argument("--kubeconfig", type=Path, default=Path.home() / ".kube" / "config")
    parser.add_argument("--report-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.e2e_test.is_file():
        print(
            f"onebox conformance: {args.e2e_test} missing (make onebox builds it)", file=sys.stderr
        )
        return 2
    args.report_dir.mkdir(parents=True, exist_ok=True)
    if any(args.report_dir.glob("junit*.xml")):
        print(f"onebox conformance: {args.report_dir} holds a report already", file=sys.stderr)
        return 2
    log = args.report_dir / "e2e.log"
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            e2e_argv(args.e2e_test, args.context, args.kubeconfig, args.report_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    took = time.monotonic() - started
    reports = sorted(args.report_dir.glob("junit*.xml"))
    if not reports:
        print(f"onebox conformance: no JUnit report (rc={proc.returncode}; {log})", file=sys.stderr)
        return 1
    specs = [s for r in reports for s in read_junit(r)]
    problems = verdict(specs)
    summary = {
        "e2e_test": str(args.e2e_test),
        "focus": FOCUS,
        "seconds": round(took, 1),
        "rc": proc.returncode,
        "ran": len(specs),
        "passed": sum(s.state == "passed" for s in specs),
        "problems": problems,
        "specs": [asdict(s) for s in specs],
    }
    (args.report_dir / "conformance.json").write_text(json.dumps(summary, indent=1) + "\n")
    for s in specs:
        print(
            f"onebox-conformance state={s.state} group={s.group}"
            f" seconds={s.seconds:.0f} name={s.name!r}"
        )
    print(
        f"onebox-conformance ran={len(specs)} passed={summary['passed']} seconds={took:.0f}"
        f" problems={len(problems)}"
    )
    for p in problems:
        print(f"onebox-conformance problem={p!r}", file=sys.stderr)
    return 0 if not problems and proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
