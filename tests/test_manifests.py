"""The manifests role: rendered through Ansible, validated offline, compared with the seed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from helpers import ROOT, VENV_BIN
from helpers import render_manifests as render
from runbook.model import registry, timing

#: The Kubernetes version the manifests are validated against (kubeadm homelab).
K8S_VERSION = "1.34.0"
ISTIO_CRDS = ROOT / "tests" / "data" / "istio" / "gateway-virtualservice-crds.yaml"
DESTINATIONRULE_CRD = ROOT / "tests" / "data" / "istio" / "destinationrule-crd.yaml"
SEED_FILES = [
    "00-namespace.yaml",
    "10-backend.yaml",
    "20-igw-current.yaml",
    "21-igw-improved.yaml",
    "22-igw-service.yaml",
    "23-igw-ordered.yaml",
    "24-igw-istio-native.yaml",
    "26-igw-pdb.yaml",
    "30-gateway.yaml",
    "31-virtualservice.yaml",
]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for profile in ("seed", "quick"):
        dest = tmp_path_factory.mktemp(profile)
        result = render(dest, {"timing_profile": profile})
        assert result.returncode == 0, result.stdout + result.stderr
        out[profile] = dest
    return out


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (
            d["kind"],
            d["metadata"]["name"]
            + (
                ""
                if "mode" not in d["metadata"].get("labels", {})
                else "/" + d["metadata"]["labels"]["mode"]
            ),
        ): d
        for name in SEED_FILES
        for d in docs(directory / name)
    }


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    )


def test_committed_manifests_match_a_fresh_render(rendered: dict[str, Path]) -> None:
    committed = ROOT / "manifests"
    assert sorted(p.name for p in committed.glob("*.yaml")) == SEED_FILES
    for name in SEED_FILES:
        assert (committed / name).read_text() == (rendered["seed"] / name).read_text(), (
            f"manifests/{name} drifted from the role: run "
            "`.venv/bin/ansible-playbook playbooks/render-manifests.yml` and commit"
        )


@pytest.mark.parametrize("profile", ["seed", "quick"])
def test_core_objects_pass_strict_kubernetes_validation(
    rendered: dict[str, Path], profile: str
) -> None:
    checked = 0
    for name in SEED_FILES:
        for d in docs(rendered[profile] / name):
            if d["apiVersion"].startswith("networking.istio.io/"):
                continue
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            checked += 1
    # 1 namespace + 2 backend (Deployment, Service) + 4 x 2 gateway (SA, Deployment)
    # + 1 Service + 1 PodDisruptionBudget
    assert checked == 13


def closed(schema: Any) -> Any:
    """Every object schema that lists properties rejects unknown ones (typo catcher)."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def istio_schemas() -> dict[str, dict[str, Any]]:
    schemas = {}
    crds = [*yaml.safe_load_all(ISTIO_CRDS.read_text())]
    for crd in [*crds, *yaml.safe_load_all(DESTINATIONRULE_CRD.read_text())]:
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        if spec["group"] != "networking.istio.io" or spec["names"]["kind"] not in (
            "Gateway",
            "VirtualService",
            "DestinationRule",
        ):
            continue
        for version in spec["versions"]:
            if version["name"] == "v1":
                root = closed(version["schema"]["openAPIV3Schema"])
                # apiVersion/kind/metadata are the API server's; we check spec
                schemas[spec["names"]["kind"]] = root["properties"]["spec"]
    assert set(schemas) == {"Gateway", "VirtualService", "DestinationRule"}
    return schemas


@pytest.mark.parametrize("profile", ["seed", "quick"])
def test_gateway_virtualservice_and_destinationrule_match_istio_crds(
    rendered: dict[str, Path], istio_schemas: dict[str, dict[str, Any]], profile: str
) -> None:
    kinds = []
    for name in ("30-gateway.yaml", "31-virtualservice.yaml"):
        for d in docs(rendered[profile] / name):
            assert d["apiVersion"] == "networking.istio.io/v1"
            jsonschema.validate(d["spec"], istio_schemas[d["kind"]])
            kinds.append(d["kind"])
    # the route, and the gateway's idle timeout toward the backend beside it
    assert kinds == ["Gateway", "VirtualService", "DestinationRule"]


def test_the_istio_check_catches_a_typo(istio_schemas: dict[str, dict[str, Any]]) -> None:
    (gw,) = docs(ROOT / "manifests" / "30-gateway.yaml")
    broken = copy.deepcopy(gw["spec"])
    broken["selectr"] = broken.pop("selector")
    with pytest.raises(jsonschema.ValidationError, match="selectr"):
        jsonschema.validate(broken, istio_schemas["Gateway"])


def leaf_diffs(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += leaf_diffs(a.get(key), b.get(key), f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            label = x.get("name", i) if isinstance(x, dict) else i
            out += leaf_diffs(x, y, f"{path}[{label}]")
        return out
    return [] if a == b else [path]


def test_current_and_improved_differ_in_exactly_the_seeds_five_places() -> None:
    current = docs(ROOT / "manifests" / "20-igw-current.yaml")
    improved = docs(ROOT / "manifests" / "21-igw-improved.yaml")
    assert current[0] == improved[0]  # the ServiceAccount
    hc = ".spec.template.spec.containers[hc]"
    assert sorted(leaf_diffs(current[1], improved[1])) == sorted(
        [
            ".metadata.labels.mode",  # 1
            f"{hc}.env",  # 5 (improved only: graceful-drain.sh settings)
            f"{hc}.lifecycle.preStop.exec.command[2]",  # 5
            f"{hc}.livenessProbe.httpGet.path",  # 4
            f"{hc}.readinessProbe.httpGet.path",  # 3
            ".spec.template.metadata.labels.mode",  # 2
        ]
    )


def test_ordered_and_istio_native_vary_only_the_mode_s_places() -> None:
    """ordered: improved's Deployment with the lb-first order and its NOLB_WAIT;
    istio-native: no hc container, pilot-agent's own drain in the proxy's env."""
    improved = docs(ROOT / "manifests" / "21-igw-improved.yaml")[1]
    ordered = docs(ROOT / "manifests" / "23-igw-ordered.yaml")[1]
    native = docs(ROOT / "manifests" / "24-igw-istio-native.yaml")[1]
    hc = ".spec.template.spec.containers[hc]"
    assert sorted(leaf_diffs(improved, ordered)) == sorted(
        [".metadata.labels.mode", ".spec.template.metadata.labels.mode", f"{hc}.env"]
    )
    henv = {e["name"]: e["value"] for e in container(ordered, "hc")["env"]}
    assert (henv["DRAIN_ORDER"], henv["NOLB_WAIT"]) == ("lb-first", "5")
    names = [c["name"] for c in native["spec"]["template"]["spec"]["containers"]]
    assert names == ["istio-proxy"]
    penv = {e["name"]: e.get("value") for e in container(native, "istio-proxy")["env"]}
    assert penv["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"] == "true"
    # over the seed HAProxy's worst detection (6 s); Istio's default 5 s is not
    assert penv["MINIMUM_DRAIN_DURATION"] == "10s"
    assert json.loads(penv["PROXY_CONFIG"])["terminationDrainDuration"] == "150s"


def test_seed_numbers_and_wiring_are_exact() -> None:
    m = by_kind(ROOT / "manifests")
    ns = m[("Namespace", "service-a")]
    assert ns["metadata"]["labels"] == {
        "istio-injection": "disabled",
        "experiment": "graceful-termination",
    }
    backend = m[("Deployment", "backend")]
    assert backend["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 305
    env = {e["name"]: e for e in container(backend, "backend")["env"]}
    assert env["HOSTNAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["SHUTDOWN_TIMEOUT"]["value"] == "300"
    probe = container(backend, "backend")["readinessProbe"]
    assert (probe["periodSeconds"], probe["failureThreshold"]) == (5, 3)
    # the gRPC service: its own process from the same image, drained the same way,
    # probed with gRPC's health protocol
    ticker = container(backend, "ticker")
    assert ticker["image"] == container(backend, "backend")["image"]
    assert ticker["command"] == ["/opt/igw/bin/python", "-m", "backend.ticker"]
    tenv = {e["name"]: e for e in ticker["env"]}
    assert (tenv["PORT"]["value"], tenv["SHUTDOWN_TIMEOUT"]["value"]) == ("9090", "300")
    assert ticker["readinessProbe"]["grpc"] == {"port": 9090}
    be_svc = m[("Service", "backend")]["spec"]
    assert [(p["name"], p["port"], p.get("appProtocol")) for p in be_svc["ports"]] == [
        ("http", 8080, None),
        ("grpc", 9090, "grpc"),
    ]

    for mode in ("current", "improved"):
        igw = m[("Deployment", f"service-a-igw/{mode}")]
        pod = igw["spec"]["template"]
        spec = pod["spec"]
        assert spec["terminationGracePeriodSeconds"] == 210
        assert igw["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
        assert igw["spec"]["replicas"] == 2
        anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
        assert spec["serviceAccountName"] == "service-a-igw"
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        proxy = container(igw, "istio-proxy")
        assert proxy["args"][:2] == ["proxy", "router"]
        penv = {e["name"]: e.get("value") for e in proxy["env"]}
        config = json.loads(penv["PROXY_CONFIG"])
        assert config["terminationDrainDuration"] == "150s"
        assert config["proxyStatsMatcher"]["inclusionRegexps"] == [
            r"http\.outbound_0\.0\.0\.0_8080;?\.downstream_rq_active"
        ]
        assert penv["PILOT_CERT_PROVIDER"] == "istiod"
        assert penv["CA_ADDR"] == "istiod.istio-system.svc:15012"
        assert penv["JWT_POLICY"] == "third-party-jwt"
        assert penv["ISTIO_META_MESH_ID"] == "cluster.local"
        ready = proxy["readinessProbe"]
        assert ready["httpGet"] == {"path": "/healthz/ready", "port": 15021}
        assert (ready["periodSeconds"], ready["failureThreshold"]) == (2, 30)
        sc = proxy["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"], sc["readOnlyRootFilesystem"]) == (
            1337,
            1337,
            True,
        )
        volumes = {v["name"]: v for v in spec["volumes"]}
        for uds in ("workload-socket", "credential-socket", "workload-certs"):
            assert volumes[uds] == {"name": uds, "emptyDir": {}}
        token = volumes["istio-token"]["projected"]["sources"][0]["serviceAccountToken"]
        assert token["audience"] == "istio-ca"
        assert volumes["istiod-ca-cert"]["configMap"]["name"] == "istio-ca-root-cert"
        assert volumes["config-volume"]["configMap"]["optional"] is True
        mounts = {vm["name"] for vm in proxy["volumeMounts"]}
        assert mounts == set(volumes)

    improved = m[("Deployment", "service-a-igw/improved")]
    hc = container(improved, "hc")
    henv = {e["name"]: e["value"] for e in hc["env"]}
    assert (henv["DRAIN_TIMEOUT"], henv["LB_BUFFER"], henv["POLL_INTERVAL"]) == ("120", "10", "2")
    assert hc["lifecycle"]["preStop"]["exec"]["command"] == [
        "/bin/sh",
        "-c",
        "/opt/hc/graceful-drain.sh",
    ]
    current = m[("Deployment", "service-a-igw/current")]
    cmd = container(current, "hc")["lifecycle"]["preStop"]["exec"]["command"][2]
    assert "/drain || true;" in cmd and "/close-lb || true;" in cmd and cmd.endswith("sleep 30")

    svc = m[("Service", "service-a-igw")]["spec"]
    assert svc["type"] == "NodePort" and svc["externalTrafficPolicy"] == "Local"
    assert {p["name"]: (p["port"], p["nodePort"]) for p in svc["ports"]} == {
        "http": (8080, 30080),
        "hc": (18180, 30180),
        "status": (15021, 32021),
    }
    pod_labels = improved["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= pod_labels.items()
    gw = m[("Gateway", "service-a-gateway")]["spec"]
    assert gw["selector"] == {"istio": "service-a-igw"}
    assert gw["selector"].items() <= pod_labels.items()
    assert gw["servers"][0]["port"] == {"number": 8080, "name": "http", "protocol": "HTTP"}
    vs = m[("VirtualService", "service-a")]["spec"]
    assert vs["gateways"] == ["service-a-gateway"]
    # the gRPC service's prefix first (routes match in order), then everything else
    routes = {r["match"][0]["uri"]["prefix"]: r for r in vs["http"]}
    assert list(routes) == ["/igw.v1.Ticker/", "/"]
    for prefix, port in (("/igw.v1.Ticker/", 9090), ("/", 8080)):
        assert routes[prefix]["timeout"] == "305s"
        assert routes[prefix]["route"][0]["destination"] == {
            "host": "backend.service-a.svc.cluster.local",
            "port": {"number": port},
        }


def test_a_broken_budget_stops_before_anything_is_written(tmp_path: Path) -> None:
    dest = tmp_path / "never"
    result = render(dest, {"timing_overrides": {"lb_buffer_s": 5}})
    assert result.returncode != 0
    assert "lb_buffer_exceeds_lb_detection" in result.stdout
    assert "LB_BUFFER 5s must exceed HAProxy's worst detection time 6s" in result.stdout
    assert not dest.exists()


def test_the_pdb_guards_every_mode_s_gateway_pods_from_the_timing_model() -> None:
    """One PodDisruptionBudget for the gateway whatever the mode (each mode's Deployment
    has the same pod label `app`), its floor the timing model's, one below the replicas."""
    objects = by_kind(ROOT / "manifests")
    (pdb,) = [d for (kind, _), d in objects.items() if kind == "PodDisruptionBudget"]
    inputs = timing.derive("seed").inputs
    assert pdb["spec"]["minAvailable"] == inputs["gateway_pdb_min_available"] == 1
    for mode in registry.MODES:
        deployment = objects[("Deployment", f"{registry.OBJECTS.gateway_deployment}/{mode}")]
        assert deployment["spec"]["replicas"] == inputs["gateway_replicas"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("role", ["manifests", "gateway"])
def test_a_role_s_argument_check_passes_when_a_tag_skips_the_timing_role(
    tmp_path: Path, role: str
) -> None:
    """A role's argument check runs whatever the tags (site.yml --tags istio, say), and
    it templates the role's defaults: the replicas, the timing budget's, are derived
    there when the timing role did not run."""
    play = tmp_path / "play.yml"
    play.write_text(
        json.dumps(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "roles": [
                        {
                            "role": role,
                            "vars": {
                                "gateway_context": "homelab",
                                "manifests_dir": str(tmp_path / "never"),
                            },
                        }
                    ],
                }
            ]
        )
    )
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), str(play), "--tags", "no_such_tag"],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert not (tmp_path / "never").exists()


def test_a_pdb_that_would_block_every_drain_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "never"
    result = render(dest, {"timing_overrides": {"gateway_pdb_min_available": 2}})
    assert result.returncode != 0
    assert "pdb_admits_an_eviction" in result.stdout, result.stdout[-3000:]
    assert "minAvailable 2 must be below its 2 replicas" in result.stdout
    assert not dest.exists()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"timing_profile": "fast"}, "fast"),
        ({"manifests_modes": ["current", "fastest"]}, "fastest"),
        ({"timing_overrides": {"lb_buffer_s": "ten"}}, "lb_buffer_s"),
        ({"timing_overrides": {"lb_bufer_s": 10}}, "lb_bufer_s"),
        # once: rendered, then HAProxy's "timer overflow" at its start
        (
            {"timing_overrides": {"longest_request_s": 100000000}},
            "(from longest_request_s=100000000) is outside what the backend's "
            "SHUTDOWN_TIMEOUT accepts, 0..86400 s: lower longest_request_s",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_value(
    tmp_path: Path, extra: dict[str, Any], named: str
) -> None:
    dest = tmp_path / "never"
    result = render(dest, extra)
    assert result.returncode != 0
    assert named in result.stdout, result.stdout[-3000:]
    assert not dest.exists()
