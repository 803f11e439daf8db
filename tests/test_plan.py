"""runbook.model.plan: a run's plan describes the budget that was deployed. The timing
role derives it once per lab (run-experiment.yml) and hands it to the runner as
`--budget`; a runner never derives another one from a profile alone."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, VENV_BIN
from runbook.localcluster.haproxy_process import stop_lab_haproxy
from runbook.model import registry, timing
from runbook.model.plan import add_arguments, add_budget_arguments, plan, plan_for

LAB_INDEX = 178


def runner_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, profile="quick")
    add_budget_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    return args


def test_a_handed_down_budget_is_the_plans_budget() -> None:
    budget = timing.report("quick", {"gateway_grace_s": 45})
    args = runner_args(["--mode=ordered", f"--budget={json.dumps(budget)}"])
    assert plan_for(args).budget["gateway_grace_s"] == 45
    # the same as deriving with the override, never the profile's own 27 s
    assert plan_for(args) == plan("quick", "ordered", overrides={"gateway_grace_s": 45})
    assert plan("quick", "ordered").budget["gateway_grace_s"] != 45


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--profile=seed"], "--budget is profile 'quick', --profile is 'seed'"),
        (['--overrides={"gateway_grace_s": 45}'], "--budget already carries the overrides"),
    ],
)
def test_a_budget_that_contradicts_the_other_arguments_is_refused(
    argv: list[str], named: str
) -> None:
    budget = json.dumps(timing.report("quick", {}))
    args = runner_args(["--mode=ordered", f"--budget={budget}", *argv])
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        plan_for(args)


def test_the_converged_lab_hands_its_runner_the_deployed_budget(tmp_path: Path) -> None:
    """run-experiment.yml with a timing override, converged as make experiment does:
    the runner's command carries the budget the manifests were rendered from."""
    lab_root = tmp_path / "lab"
    lab_dir = lab_root / str(LAB_INDEX)
    try:
        converge = subprocess.run(
            [
                str(VENV_BIN / "ansible-playbook"),
                "playbooks/run-experiment.yml",
                "-e",
                "mode=ordered",
                "-e",
                f"lab_index={LAB_INDEX}",
                "-e",
                f"lab_root={lab_root}",
                "-e",
                f"experiment_artifacts={tmp_path / 'artifacts'}",
                "-e",
                json.dumps(
                    {"experiment_converge_only": True, "timing_overrides": {"gateway_grace_s": 45}}
                ),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert converge.returncode == 0, converge.stdout[-3000:]
    finally:
        stop_lab_haproxy(lab_dir)
    argv = json.loads((lab_dir / "runner.json").read_text())
    # handed down, not derived again from the profile and the overrides
    handed = [a for a in argv if a.startswith(("--budget=", "--overrides="))]
    assert len(handed) == 1 and handed[0].startswith("--budget=")
    derived = json.loads(json.dumps(timing.report("quick", {"gateway_grace_s": 45})))
    assert json.loads(handed[0].removeprefix("--budget=")) == derived
    assert plan_for(runner_args(argv)).budget["gateway_grace_s"] == 45
    (deployment,) = [
        d
        for d in yaml.safe_load_all(
            (lab_dir / "manifests" / registry.mode("ordered").manifest).read_text()
        )
        if d and d["kind"] == "Deployment"
    ]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45


def test_a_client_retry_is_in_the_plan_and_refused_where_no_tool_makes_it() -> None:
    once = plan_for(runner_args(["--mode=improved", "--scenario=steady", "--client-retry=once"]))
    assert once.load.client_retry == "once"
    assert any("retries once" in note for note in once.notes)
    assert plan("quick", "improved", "steady").load.client_retry == "none"
    # busy's pooled class is vegeta's, which has no retry of the driver's
    with pytest.raises(registry.UnknownName, match="client retry 'once' is the load driver's"):
        plan("quick", "ordered", "busy", client_retry="once")
    with pytest.raises(registry.UnknownName, match="client retry 'twice' is not one of"):
        plan("quick", "ordered", "steady", client_retry="twice")
