"""Both profiles rendered by the converge: every object valid, and the seed's numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from runbook.model import registry

OUT = Path("/tmp/molecule-manifests")
ISTIO_DATA = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "tests/data/istio"
CRDS = (ISTIO_DATA / "gateway-virtualservice-crds.yaml", ISTIO_DATA / "destinationrule-crd.yaml")


def objects(profile: str) -> list[dict]:
    return [
        d
        for p in sorted((OUT / profile).glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


def istio_spec_schema(kind: str) -> dict:
    for crd in (d for path in CRDS for d in yaml.safe_load_all(path.read_text())):
        if (
            crd
            and crd["spec"]["names"]["kind"] == kind
            and crd["spec"]["group"] == "networking.istio.io"
        ):
            version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
            return version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    raise LookupError(kind)


@pytest.mark.parametrize("profile", ["seed", "quick"])
def test_every_file_and_valid_objects(profile: str) -> None:
    # six shared files (the PodDisruptionBudget one) and one gateway Deployment per mode
    modes = {m.manifest for m in registry.MODES.values()}
    names = {p.name for p in (OUT / profile).glob("*.yaml")}
    assert modes <= names and len(names) == 6 + len(modes)
    for obj in objects(profile):
        if obj["apiVersion"].startswith("networking.istio.io/"):
            jsonschema.validate(obj["spec"], istio_spec_schema(obj["kind"]))
        else:
            kubernetes_validate.validate(obj, "1.34.0", strict=True)


def test_seed_numbers() -> None:
    by = {
        (o["kind"], o["metadata"]["name"], o["metadata"].get("labels", {}).get("mode")): o
        for o in objects("seed")
    }
    assert (
        by[("Deployment", "backend", None)]["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        == 305
    )
    gw = by[("Deployment", "service-a-igw", "improved")]["spec"]["template"]["spec"]
    assert gw["terminationGracePeriodSeconds"] == 210
    proxy_env = {e["name"]: e.get("value") for e in gw["containers"][0]["env"]}
    assert json.loads(proxy_env["PROXY_CONFIG"])["terminationDrainDuration"] == "150s"
    vs = by[("VirtualService", "service-a", None)]
    assert vs["spec"]["http"][0]["timeout"] == "305s"
