"""What each of the project's Go modules pins, read from its go.mod (the one place).

Each module under onebox/modules/<component>/ requires one upstream module (its
`require` line names it) and lists the binaries it builds as `tool` directives. The
cache key of a build is the component, that version and a digest of go.sum: a second
clone on the same machine, with the same pins, finds the build done.

    python -m runbook.onebox.pins onebox/modules      # JSON: one object per component
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

#: The upstream module each component's go.mod requires, the version that names it.
UPSTREAM = {
    "kubernetes": "k8s.io/kubernetes",
    "etcd": "go.etcd.io/etcd/server/v3",
    "coredns": "github.com/coredns/coredns",
    "helm": "helm.sh/helm/v3",
    "istio": "istio.io/istio",
    # not onebox's: the load driver's high-rate class, pinned and built the same way
    "vegeta": "github.com/tsenart/vegeta/v12",
}
#: What onebox's modules folder must hold, every one of them.
ONEBOX_COMPONENTS = ("kubernetes", "etcd", "coredns", "helm", "istio")

_REQUIRE = re.compile(r"^\s*(?:require\s+)?(\S+)\s+(v\S+)", re.M)
_TOOL_BLOCK = re.compile(r"^tool\s*\((.*?)^\)", re.M | re.S)
_TOOL_LINE = re.compile(r"^tool\s+([^\s(]\S*)\s*$", re.M)
_REQUIRE_SECTION = re.compile(r"^require\s*\((.*?)^\)|^require\s+\S+\s+\S+", re.M | re.S)


class PinError(ValueError):
    """A module directory that does not say what it builds."""


@dataclass(frozen=True)
class Pin:
    component: str
    module: str
    version: str
    tools: tuple[str, ...]
    go_sum_digest: str
    directory: str

    @property
    def key(self) -> str:
        """The cache folder's name: changes whenever the pin or any dependency does."""
        return f"{self.component}-{self.version}-{self.go_sum_digest}"


def required_version(go_mod: str, module: str) -> str | None:
    """The version go.mod requires of `module` (in a require line or block), or None."""
    for section in _REQUIRE_SECTION.finditer(go_mod):
        for name, version in _REQUIRE.findall(section.group(0).removeprefix("require")):
            if name == module:
                return version
    return None


def tools(go_mod: str) -> tuple[str, ...]:
    """The packages go.mod's `tool` directives name, in the order written."""
    found: list[str] = []
    for block in _TOOL_BLOCK.finditer(go_mod):
        found += [ln.split("//")[0].strip() for ln in block.group(1).splitlines()]
    found += _TOOL_LINE.findall(go_mod)
    return tuple(t for t in found if t)


def read_pin(directory: Path) -> Pin:
    component = directory.name
    if component not in UPSTREAM:
        raise PinError(f"{directory}: unknown component {component!r}; known: {sorted(UPSTREAM)}")
    go_mod_path, go_sum_path = directory / "go.mod", directory / "go.sum"
    if not go_mod_path.is_file() or not go_sum_path.is_file():
        raise PinError(f"{directory}: needs go.mod and go.sum")
    go_mod = go_mod_path.read_text(encoding="utf-8")
    module = UPSTREAM[component]
    version = required_version(go_mod, module)
    if version is None:
        raise PinError(f"{go_mod_path}: does not require {module}")
    built = tools(go_mod)
    if not built:
        raise PinError(f"{go_mod_path}: names no tool to build")
    digest = hashlib.sha256(go_sum_path.read_bytes()).hexdigest()[:12]
    return Pin(component, module, version, built, digest, str(directory))


def read_pins(modules_dir: Path, required: tuple[str, ...] = ONEBOX_COMPONENTS) -> dict[str, Pin]:
    """Every module in `modules_dir`, which must hold at least the `required` ones."""
    pins = {d.name: read_pin(d) for d in sorted(modules_dir.iterdir()) if d.is_dir()}
    missing = sorted(set(required) - set(pins))
    if missing:
        raise PinError(f"{modules_dir}: no module for {missing}")
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        pins = read_pins(args.modules_dir)
    except PinError as e:
        print(f"onebox pins: {e}", file=sys.stderr)
        return 2
    json.dump({c: asdict(p) | {"key": p.key} for c, p in pins.items()}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
