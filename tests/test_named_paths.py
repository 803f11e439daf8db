"""Every file and module of the project named in a comment, docstring or document
exists: a moved file leaves no stale word behind it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The project's top-level folders: a path that starts with one is the project's.
TOP = r"(?:lab|roles|docs|manifests|playbooks|tests|benchmarks|apps|inventory|molecule|onebox|\.ci)"
FILE = re.compile(
    rf"(?<![\w./-]){TOP}/[\w./-]*\.(?:py|ya?ml|md|j2|sh|json|toml|cfg|txt|html|go|mod|sum)\b"
)
MODULE = re.compile(r"(?<![\w./{-])lab(?:\.[a-z_][a-z0-9_]*)+\b")
TEXT = (".py", ".yml", ".yaml", ".md", ".j2", ".sh", ".toml", ".cfg", "Makefile", "run")

#: Paths that are another project's, named where we say where a fact comes from.
ELSEWHERE = {
    "manifests/charts/base/files/crd-all.gen.yaml": "istio/istio's source tree",
}


def tracked_text() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / n for n in names if n.endswith(TEXT) and (ROOT / n).is_file()]


def module_exists(dotted: str) -> bool:
    """A dotted lab name is a module, or a name one of its modules defines."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        source = (
            base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        )
        if source.is_file():
            rest = parts[cut:]
            if cut == 1 and rest:
                return False  # a name directly under lab that is no module of it
            text = source.read_text(encoding="utf-8")
            return all(re.search(rf"\b{re.escape(name)}\b", text) for name in rest[:1])
    return False


def test_every_named_project_file_exists() -> None:
    missing = []
    for path in tracked_text():
        for match in FILE.finditer(path.read_text(encoding="utf-8", errors="replace")):
            named = match.group(0)
            if named not in ELSEWHERE and not (ROOT / named).exists():
                missing.append(f"{path.relative_to(ROOT)} names {named}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_every_named_lab_module_exists() -> None:
    missing = []
    for path in tracked_text():
        for match in MODULE.finditer(path.read_text(encoding="utf-8", errors="replace")):
            if not module_exists(match.group(0)):
                missing.append(f"{path.relative_to(ROOT)} names {match.group(0)}")
    assert not missing, "\n".join(sorted(set(missing)))


CITATION = re.compile(r"seed 00\d (?:§\d+|Q\d+)")


def test_every_cited_design_section_is_in_design_md() -> None:
    """The walkthroughs are not in the repository: docs/design.md's table says what each
    section a comment cites covers."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    table = {m.group(0) for m in CITATION.finditer(design) if f"| {m.group(0)} |" in design}
    cited = {
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for path in tracked_text()
        for m in CITATION.finditer(path.read_text(encoding="utf-8", errors="replace"))
        if m.group(0) not in table
    }
    assert not cited, "\n".join(sorted(cited))
