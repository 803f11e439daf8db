"""Where the istio role finds its charts, checked by the preflight before the untaint
changes the cluster (review defect 4: a chart index cached once and never refreshed
failed the install after the untaint). Real helm, built from the pinned module, against
a chart repository on loopback (charts made by `helm package` and `helm repo index`,
served over HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, VENV_BIN, ChartRepo, helm_env

PLAYBOOK = str(VENV_BIN / "ansible-playbook")
PINNED = yaml.safe_load((ROOT / "roles/istio/defaults/main.yml").read_text())["istio_version"]
CHARTS = yaml.safe_load((ROOT / "roles/istio/vars/main.yml").read_text())["istio_releases"]


@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm onebox runs, built from the project's Go module (at once from the cache
    when `make onebox` or an earlier test built it)."""
    cache = yaml.safe_load((ROOT / "roles/onebox_build/defaults/main.yml").read_text())[
        "onebox_build_cache_dir"
    ]
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.onebox.build",
            "--modules",
            str(ROOT / "onebox/modules"),
            "--cache",
            cache,
            "helm",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return Path(json.loads(built.stdout.splitlines()[-1])["helm"]) / "helm"


def publish(repo: ChartRepo, version: str) -> None:
    """Istio's two chart names at `version`, empty."""
    charts = []
    for chart in (c["repository"] for c in CHARTS.values()):
        src = repo.root / "src" / f"{chart}-{version}"
        (src / "templates").mkdir(parents=True)
        (src / "Chart.yaml").write_text(f"apiVersion: v2\nname: {chart}\nversion: {version}\n")
        charts.append(src)
    repo.publish(*charts)


@pytest.fixture
def repo(helm: Path, tmp_path: Path) -> Iterator[ChartRepo]:
    served = ChartRepo(helm, tmp_path)
    try:
        yield served
    finally:
        served.close()


def chart_lookup(repo: ChartRepo, **extra: str) -> tuple[int, str]:
    """The preflight's chart lookup alone (`--tags charts`: no cluster is reached)."""
    result = subprocess.run(
        [
            PLAYBOOK,
            "-i",
            "inventory/homelab",
            "playbooks/preflight.yml",
            "--tags",
            "charts",
            "-e",
            json.dumps(
                {"istio_helm_binary": str(repo.helm), "istio_chart_repo_url": repo.url} | extra
            ),
        ],
        cwd=ROOT,
        env=helm_env(repo.root),
        capture_output=True,
        text=True,
        timeout=180,
    )
    return result.returncode, " ".join(result.stdout.split())


def test_a_pinned_version_the_repository_lacks_is_refused_in_the_preflight(
    repo: ChartRepo,
) -> None:
    publish(repo, "1.29.0")
    code, out = chart_lookup(repo)
    assert code != 0, out[-2000:]
    assert f"istio_version={PINNED} from {repo.url}:" in out, out[-2000:]
    assert f'chart "base" version "{PINNED}" not found' in out, out[-2000:]
    assert f'chart "istiod" version "{PINNED}" not found' in out, out[-2000:]
    assert "nothing was changed" in out
    # the refusal comes before the timing role, the preflight's last step
    assert "Check the timing budget" not in out


def test_a_release_made_since_the_index_was_cached_is_found(repo: ChartRepo) -> None:
    """The homelab's case: `helm repo add istio` once, the cached index older than the
    pinned release. The install reads the repository's index afresh (`--repo`), so the
    stale copy cannot fail it; helm's own cached lookup, the old install path, does."""
    publish(repo, "1.29.0")
    repo.run("repo", "add", "istio", repo.url)
    publish(repo, PINNED)  # released after the controller cached the index
    stale = repo.run("show", "chart", "istio/base", "--version", PINNED, check=False)
    assert stale.returncode != 0 and "not found" in stale.stderr, stale.stderr
    code, out = chart_lookup(repo)
    assert code == 0, out[-2000:]
    assert "Look up the pinned charts in the repository" in out


def test_a_local_source_missing_a_chart_is_refused_naming_it(
    repo: ChartRepo, tmp_path: Path
) -> None:
    charts = tmp_path / "charts"
    (charts / CHARTS["istio-base"]["local"]).mkdir(parents=True)
    (charts / CHARTS["istio-base"]["local"] / "Chart.yaml").write_text("name: base\n")
    code, out = chart_lookup(repo, istio_chart_source="local", istio_chart_dir=str(charts))
    assert code != 0, out[-2000:]
    assert f"istio_chart_dir={charts} has no istio-control/istio-discovery/Chart.yaml" in out
    (charts / "istio-control/istio-discovery").mkdir(parents=True)
    (charts / "istio-control/istio-discovery/Chart.yaml").write_text("name: istiod\n")
    code, out = chart_lookup(repo, istio_chart_source="local", istio_chart_dir=str(charts))
    assert code == 0, out[-2000:]
