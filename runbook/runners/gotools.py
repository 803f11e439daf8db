"""The Go tools the runners drive, pinned in the project's modules under tools/go/ and
built like onebox's components (runbook.onebox.build), into a cache outside the checkout.

    python -m runbook.runners.gotools          # build what is not built yet (make setup)
    python -m runbook.runners.gotools --check busy steady   # exit 2 naming a tool that
                                               # a scenario needs and is not built

vegeta drives the `busy` scenario's high-rate class (runbook.load.vegeta).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..model import registry
from ..onebox.build import BuildError, build, built_dir
from ..onebox.pins import Pin, PinError, read_pin

ROOT = Path(__file__).resolve().parents[2]
#: the project's modules for the tools (each one folder, like onebox/modules/)
MODULES = ROOT / "tools" / "go"
#: machine-wide, as onebox's is: a second clone with the same pins finds them built
#: (IGW_TOOLS_CACHE moves it: a test's empty cache, a machine's other disk)
CACHE = Path(os.environ.get("IGW_TOOLS_CACHE") or "/var/cache/igw-tools")
TOOLS = ("vegeta",)


class ToolMissing(RuntimeError):
    """A tool a run needs that is not built: the message says how to build it."""


def pin(tool: str) -> Pin:
    return read_pin(MODULES / tool)


def binary(tool: str, cache: Path = CACHE) -> Path:
    """The built binary of `tool` at its pin, or ToolMissing naming the command."""
    path = built_dir(cache, pin(tool)) / tool
    if not (path.parent / "build.json").is_file() or not path.is_file():
        raise ToolMissing(
            f"{tool} is not built at its pin ({path}): run `make setup` "
            f"(python -m runbook.runners.gotools)"
        )
    return path


def for_scenario(scenario: str) -> Path | None:
    """vegeta's binary when the scenario's pooled class is vegeta's, else None;
    ToolMissing when it is needed and not built (said before anything starts)."""
    return binary("vegeta") if registry.scenario(scenario).pooled_tool == "vegeta" else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        nargs="+",
        metavar="SCENARIO",
        help="build nothing: refuse (exit 2) when a scenario's tool is not built",
    )
    args = parser.parse_args(argv)
    if args.check:
        try:
            for scenario in args.check:
                for_scenario(scenario)
        except (ToolMissing, registry.UnknownName) as e:
            print(f"scenario {scenario}: {e}", file=sys.stderr)
            return 2
        return 0

    def log(msg: str) -> None:
        print(f"gotools {msg}", flush=True)

    try:
        for tool in TOOLS:
            build(pin(tool), CACHE, log)
    except (BuildError, PinError) as e:
        print(f"gotools failed {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
