"""Build one component's binaries from the project's Go module, once per pin.

    python -m runbook.onebox.build --modules onebox/modules --cache /var/cache/igw-onebox \
        kubernetes etcd

Each component lands in <cache>/bin/<pin key>/ (runbook.onebox.pins): built into a
`.partial` folder and renamed when every binary is there, so a build cut short is
never taken for a finished one and the next run starts it again. `build.json` beside
the binaries records the pin, the command and how long it took. The Go module and
build caches live in the same machine-wide folder, outside every checkout.
Progress and failures are logfmt lines naming the component and the step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .pins import ONEBOX_COMPONENTS, Pin, PinError, read_pins

#: Binaries whose package path does not end in the name people call them by.
BINARY_NAMES = {"go.etcd.io/etcd/server/v3": "etcd"}

#: Test binaries (`go test -c`) built beside a component's tools: Kubernetes' own
#: end-to-end suite, whose conformance tests check onebox's cluster (docs/onebox.md).
TEST_BINARIES = {"kubernetes": {"e2e.test": "k8s.io/kubernetes/test/e2e"}}


class BuildError(RuntimeError):
    """A build step that failed; the message names the component and the step."""


def version_ldflags(pin: Pin, source: Path | None = None) -> list[str]:
    """The -X flags that make a binary report the version it was built from.

    Kubernetes reads its version from two packages set at link time (its own
    hack/lib/version.sh sets the same variables); without them every binary says
    v0.0.0-master and kubeadm refuses to pick image tags. Helm likewise. Istio too
    (istiod reads each proxy's version to decide what config it may send; "unknown"
    would make every feature check guess): a build from a commit, not a release,
    gets the release line of its VERSION file plus "-dev", as Istio's own Makefile
    gives one. vegeta's main.Version, as its Makefile sets it. etcd and CoreDNS carry
    their version in their source.
    """
    if pin.component == "istio":
        if source is None:
            raise BuildError("component=istio step=version: the module's source is needed")
        line = (source / "VERSION").read_text(encoding="utf-8").strip()
        values = {
            "buildVersion": f"{line}-dev",
            "buildGitRevision": pin.version.rsplit("-", 1)[-1],
            "buildStatus": "archive",
            "buildTag": pin.version,
            "buildHub": "onebox.invalid/istio",
        }
        return [f"-X istio.io/istio/pkg/version.{k}={v}" for k, v in values.items()]
    if pin.component == "kubernetes":
        major, minor = pin.version.removeprefix("v").split(".")[:2]
        values = {
            "gitVersion": pin.version,
            "gitMajor": major,
            "gitMinor": minor,
            # Built from the module's archive, not a git checkout (version.sh's word).
            "gitTreeState": "archive",
        }
        return [
            f"-X {pkg}.{k}={v}"
            for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
            for k, v in values.items()
        ]
    if pin.component == "helm":
        return [f"-X helm.sh/helm/v3/internal/version.version={pin.version}"]
    if pin.component == "vegeta":
        return [f"-X main.Version={pin.version}"]
    return []


def go_environment(cache: Path) -> dict[str, str]:
    """Static binaries; modules and build cache outside the checkout; go.sum as is."""
    return os.environ | {
        "GOMODCACHE": str(cache / "gomod"),
        "GOCACHE": str(cache / "gocache"),
        "GOFLAGS": "-mod=readonly",
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
    }


def go_ldflags(pin: Pin, source: Path | None) -> str:
    """Stripped, and told its version: the same for the tools and the test binaries."""
    return " ".join(["-s", "-w", *version_ldflags(pin, source)])


def go_build_argv(pin: Pin, out_dir: Path, source: Path | None = None) -> list[str]:
    ldflags = go_ldflags(pin, source)
    return ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", f"{out_dir}/", *pin.tools]


def go_test_argv(
    pin: Pin, out_dir: Path, name: str, package: str, source: Path | None = None
) -> list[str]:
    ldflags, out = go_ldflags(pin, source), f"{out_dir}/{name}"
    return ["go", "test", "-c", "-trimpath", "-ldflags", ldflags, "-o", out, package]


def go_default_name(tool: str) -> str:
    """What `go build -o dir/` names a package's binary: its last element, less a
    major-version suffix (go.etcd.io/etcd/server/v3 -> server)."""
    parts = tool.split("/")
    if len(parts) > 1 and parts[-1][:1] == "v" and parts[-1][1:].isdigit():
        return parts[-2]
    return parts[-1]


def binary_name(tool: str) -> str:
    """The name the binary is called by (and kubeadm's manifests run)."""
    return BINARY_NAMES.get(tool, go_default_name(tool))


def module_source(pin: Pin, cache: Path) -> Path:
    """The pinned module's files, downloaded into the machine's module cache."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", pin.module],
        cwd=pin.directory,
        env=go_environment(cache),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BuildError(
            f"component={pin.component} step=download module={pin.module}:"
            f" {(proc.stdout + proc.stderr).strip()[-800:]}"
        )
    return Path(json.loads(proc.stdout)["Dir"])


def go(pin: Pin, step: str, argv: list[str], cache: Path, started: float) -> None:
    proc = subprocess.run(
        argv, cwd=pin.directory, env=go_environment(cache), capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise BuildError(
            f"component={pin.component} step={step} rc={proc.returncode}"
            f" after {time.monotonic() - started:.0f}s:\n{tail}"
        )


def built_dir(cache: Path, pin: Pin) -> Path:
    return cache / "bin" / pin.key


def build(pin: Pin, cache: Path, log: Callable[[str], None]) -> Path:
    """The folder with the component's binaries: found, or built now."""
    final = built_dir(cache, pin)
    if (final / "build.json").is_file():
        log(f"component={pin.component} step=cached dir={final}")
        return final
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    source = module_source(pin, cache)
    argv = go_build_argv(pin, partial, source)
    log(f"component={pin.component} step=go-build version={pin.version} tools={len(pin.tools)}")
    started = time.monotonic()
    go(pin, "go-build", argv, cache, started)
    tests = TEST_BINARIES.get(pin.component, {})
    for name, package in tests.items():
        log(f"component={pin.component} step=go-test-c binary={name}")
        test_argv = go_test_argv(pin, partial, name, package, source)
        go(pin, f"go-test-c {name}", test_argv, cache, started)
    took = time.monotonic() - started
    for tool in pin.tools:
        name, default = binary_name(tool), partial / go_default_name(tool)
        if name != default.name and default.is_file():
            default.rename(partial / name)
        if not (partial / name).is_file():
            raise BuildError(f"component={pin.component} step=go-build: {name} was not built")
    record = {
        "component": pin.component,
        "module": pin.module,
        "version": pin.version,
        "key": pin.key,
        "binaries": sorted([*(binary_name(t) for t in pin.tools), *tests]),
        "argv": argv,
        "seconds": round(took, 1),
    }
    (partial / "build.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    log(f"component={pin.component} step=built seconds={took:.0f} dir={final}")
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", type=Path, required=True, help="onebox/modules")
    parser.add_argument("--cache", type=Path, required=True, help="machine-wide cache folder")
    parser.add_argument("components", nargs="*", help="default: every component")
    args = parser.parse_args(argv)
    try:
        # components named: checked below, by name; none: onebox's whole set
        pins = read_pins(args.modules, () if args.components else ONEBOX_COMPONENTS)
    except PinError as e:
        print(f"onebox build: {e}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.components) - set(pins))
    if unknown:
        print(
            f"onebox build: unknown component(s) {unknown}; known: {sorted(pins)}", file=sys.stderr
        )
        return 2
    if shutil.which("go") is None:
        print(
            "onebox build: no `go` on PATH (Go 1.24 or newer builds the pinned modules)",
            file=sys.stderr,
        )
        return 2

    def log(msg: str) -> None:
        print(f"onebox-build {msg}", flush=True)

    results = {}
    try:
        for component in args.components or list(pins):
            results[component] = str(build(pins[component], args.cache, log))
    except BuildError as e:
        print(f"onebox-build failed {e}", file=sys.stderr)
        return 1
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
