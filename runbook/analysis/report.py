"""report.html: one self-contained page per run (base64 PNG, no JavaScript), and a
comparison across runs.

    # the table, and a comparison page beside the runs
    python -m runbook.analysis.report compare artifacts/<run> artifacts/<run> ...
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ..artifacts.events import read_jsonl
from ..artifacts.rundir import utc_stamp
from ..model import registry
from ..model.registry import MODES, SCENARIOS, SHORT_CLASSES
from .comparison import VERDICT_KINDS, comparison_doc, invalid_runs, verdict_matrix
from .summary import verdict

OUTCOME_COLOURS = {
    None: "#2e7d32",
    "5xx": "#c62828",
    "reset": "#ad1457",
    "truncated": "#ef6c00",
    "refused": "#6a1b9a",
    "timeout": "#4e342e",
    "4xx": "#f9a825",
    "other": "#616161",
}
HC_LEVEL = {"OPEN": 5, "NOLB": 4, "DRAINING": 3, "CLOSING": 2, "CLOSED": 1, "FAULT": 0}


def _s(ts_ms: float, t_ms: float) -> float:
    return (ts_ms - t_ms) / 1000


def figure(
    records: list[dict[str, Any]],
    events: list[dict[str, Any]],
    summary: dict[str, Any],
    t_ms: float,
    x_range: tuple[float, float] | None = None,
) -> str:
    """The run's timeline as a base64 PNG."""
    starts = [_s(r["start_ms"], t_ms) for r in records] or [0.0]
    x_lo = min(starts) - 1
    x_hi = max([_s(e["ts_ms"], t_ms) for e in events] + [0.0]) + 1
    fig, axes = plt.subplots(
        5, 1, figsize=(12, 13), sharex=True, gridspec_kw={"height_ratios": [3, 1.4, 1.2, 1.2, 1.4]}
    )
    ax_long, ax_short, ax_hc, ax_lb, ax_envoy = axes
    longs = sorted(
        (r for r in records if r["class"] not in SHORT_CLASSES), key=lambda r: r["start_ms"]
    )
    for i, r in enumerate(longs):
        end = r["end_ms"] if r.get("end_ms") is not None else r["start_ms"]
        ax_long.plot(
            [_s(r["start_ms"], t_ms), _s(end, t_ms)],
            [i, i],
            lw=6,
            color=OUTCOME_COLOURS.get(r["error"], "#616161"),
            solid_capstyle="butt",
        )
        ax_long.text(
            _s(end, t_ms) + 0.2, i, r["error"] or str(r.get("status")), va="center", fontsize=8
        )
    if len(longs) <= 40:  # beyond that the labels overlap; the table has each request
        ax_long.set_yticks(
            range(len(longs)),
            [
                f"{r['class']} #{r['id']} via {(r.get('served_by') or {}).get('node') or '?'}"
                for r in longs
            ],
            fontsize=8,
        )
    else:
        ax_long.set_ylabel("long requests, by start")
    ax_long.set_title(verdict(summary))

    shorts = [r for r in records if r["class"] in SHORT_CLASSES]
    if shorts:
        lo = int(min(_s(r["start_ms"], t_ms) for r in shorts)) - 1
        hi = int(max(_s(r["start_ms"], t_ms) for r in shorts)) + 1
        bins = list(range(lo, hi + 1))
        ok = [_s(r["start_ms"], t_ms) for r in shorts if not r["error"]]
        bad = [_s(r["start_ms"], t_ms) for r in shorts if r["error"]]
        ax_short.hist(
            [ok, bad], bins=bins, stacked=True, color=["#2e7d32", "#c62828"], label=["ok", "failed"]
        )
        ax_short.legend(loc="upper right", fontsize=8)
    ax_short.set_ylabel("short req/s")

    for pod in sorted({e["pod"] for e in events if e["source"] == "hc"}):
        steps = [
            (e["ts_ms"], HC_LEVEL.get(e["to"], 0))
            for e in events
            if e["source"] == "hc" and e.get("pod") == pod
        ]
        xs = [_s(ts, t_ms) for ts, _ in steps]
        ys = [lvl for _, lvl in steps]
        if xs:
            ax_hc.step([x_lo, *xs, x_hi], [HC_LEVEL["OPEN"], *ys, ys[-1]], where="post", label=pod)
    ax_hc.set_yticks(list(HC_LEVEL.values()), list(HC_LEVEL))
    ax_hc.set_ylabel("hc FSM")
    if ax_hc.get_legend_handles_labels()[0]:  # istio-native has no hc
        ax_hc.legend(loc="lower left", fontsize=7)

    for server in sorted({e["server"] for e in events if e.get("kind") == "server_state"}):
        pts = [
            (_s(e["ts_ms"], t_ms), 1 if str(e["status"]).startswith("UP") else 0)
            for e in events
            if e.get("kind") == "server_state" and e["server"] == server
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax_lb.step([*xs, x_hi], [*ys, ys[-1]], where="post", label=server)
    ax_lb.set_yticks([0, 1], ["DOWN", "UP"])
    ax_lb.set_ylabel("HAProxy")
    ax_lb.legend(loc="lower left", fontsize=7)

    for pod in sorted({e["pod"] for e in events if e.get("kind") == "active_requests"}):
        pts = [
            (_s(e["ts_ms"], t_ms), e["value"] if e["value"] is not None else float("nan"))
            for e in events
            if e.get("kind") == "active_requests" and e["pod"] == pod
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax_envoy.step([*xs, x_hi], [*ys, ys[-1]], where="post", label=pod)
    ax_envoy.set_ylabel("Envoy active rq")
    ax_envoy.set_xlabel("seconds from termination")
    ax_envoy.legend(loc="upper right", fontsize=7)

    marks = [
        e
        for e in events
        if e["kind"]
        in (
            "pod_terminating",
            "prestop_finished",
            "sigterm",
            "pod_terminated",
            "drain_listeners",
            "killing_envoy",
        )
    ]
    failures = [r for r in records if r.get("error") and r.get("end_ms") is not None]
    for ax in axes:
        ax.axvline(0, color="black", lw=1)
        for r in failures:  # each failed request, where it failed
            ax.axvline(_s(r["end_ms"], t_ms), color="#c62828", lw=0.7, alpha=0.5, ls="--")
        for e in marks:
            ax.axvline(_s(e["ts_ms"], t_ms), color="grey", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    ax_envoy.set_xlim(*(x_range or (x_lo, x_hi)))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def page_templates() -> jinja2.Environment:
    """The pages' templates (runbook/analysis/templates)."""
    # autoescape: pod names, notes and error details come from the run, not from us
    return jinja2.Environment(
        loader=jinja2.PackageLoader("runbook.analysis", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _per_class(exposure: dict[str, Any], key: str) -> str:
    """`sleep 3 stream 2 short -`: a class nothing exposed shows `-` (not tested)."""
    return " ".join(
        f"{c} {e[key] if e['tested'] or key == 'exposed' else '-'}" for c, e in exposure.items()
    )


def comparison_rows(summaries: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for s in summaries:
        t = s["timings_s"]
        exposure = s.get("exposure") or {}
        rows.append(
            [
                s["mode"],
                s["scenario"],
                s.get("event", registry.DEFAULT_EVENT),
                # an invalid run is shown, never counted (runbook.analysis.validity)
                "yes" if s.get("valid", True) else "NO",
                _per_class(exposure, "exposed") if exposure else "?",
                _per_class(exposure, "lost") if exposure else "?",
                s.get("lost_beyond_protection", "?"),
                ", ".join(f"{k} x{v}" for k, v in s.get("causes", {}).items()) or "-",
                s["failed_total"],
                t["termination_to_lb_down"],
                t.get("termination_to_zero_in_flight"),
                t["termination_to_pod_gone"],
            ]
        )
    return rows


COMPARISON_HEADER = [
    "mode",
    "scenario",
    "event",
    "valid",
    "exposed per class",
    "lost of those",
    "beyond protection",
    "causes",
    "failed (all)",
    "to LB out (s)",
    "to zero in flight (s)",
    "to pod gone (s)",
]


def text_table(summaries: list[dict[str, Any]]) -> str:
    rows = [COMPARISON_HEADER, *([str(c) for c in r] for r in comparison_rows(summaries))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COMPARISON_HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def write_run_report(run_dir: Path) -> Path:
    records = read_jsonl(run_dir / "requests.jsonl")
    events = read_jsonl(run_dir / "events.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    journal = json.loads((run_dir / "journal.json").read_text())
    t_ms = journal["termination_ms"]
    page = (
        page_templates()
        .get_template("run.html.j2")
        .render(
            summary=summary,
            verdict=verdict(summary),
            target=journal["target"],
            header=COMPARISON_HEADER,
            rows=comparison_rows([summary]),
            png=figure(records, events, summary, t_ms),
            failed=summary.get("failed", []),
            summary_json=json.dumps(summary, indent=2),
        )
    )
    path = run_dir / "report.html"
    with path.open("x", encoding="utf-8") as f:
        f.write(page)
    return path


def summaries_by_pair(run_dirs: list[Path]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """case -> mode -> the runs' summaries, each with its `run_dir`, in the registry's
    order of scenarios, events and modes. A case is the scenario under its run's event
    (registry.case: `steady`, `steady@drain`): the comparison's columns."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for d in run_dirs:
        s = json.loads((d / "summary.json").read_text())
        case = registry.case(s["scenario"], s.get("event", registry.DEFAULT_EVENT))
        out.setdefault(case, {}).setdefault(s["mode"], []).append({**s, "run_dir": str(d)})
    return {
        sc: {m: out[sc][m] for m in sorted(out[sc], key=registry_order(MODES))}
        for sc in sorted(out, key=case_order)
    }


def case_order(case: str) -> tuple[Any, ...]:
    """A sort key for case names: the registry's order of scenarios, then of events."""
    sc, _, ev = case.partition(registry.CASE_SEPARATOR)
    return (
        *registry_order(SCENARIOS)(sc),
        *registry_order(registry.EVENTS)(ev or registry.DEFAULT_EVENT),
    )


def registry_order(known: Any) -> Any:
    """A sort key: the names in `known`'s order (the registry's), then any other by name."""
    names = list(known)
    return lambda name: (names.index(name) if name in names else len(names), name)


def write_comparison(run_dirs: list[Path], out: Path, doc: dict[str, Any]) -> tuple[str, Path]:
    """The comparison page: the verdict matrix (modes x scenarios, from `doc`, the
    comparison document), the invalid runs and why, then each run's row and plot."""
    summaries = [json.loads((d / "summary.json").read_text()) for d in run_dirs]
    sections = []
    for d, s in zip(run_dirs, summaries, strict=True):
        t_ms = json.loads((d / "journal.json").read_text())["termination_ms"]
        png = figure(
            read_jsonl(d / "requests.jsonl"),
            read_jsonl(d / "events.jsonl"),
            s,
            t_ms,
            x_range=(-6, 30),
        )
        sections.append(
            {
                "verdict": verdict(s),
                "href": f"{d.name}/report.html",
                "name": d.name,
                "mode": s["mode"],
                "png": png,
            }
        )
    scenarios = doc["scenarios"]
    modes = sorted(
        {m for cmp_ in scenarios.values() for m in cmp_["modes"]}, key=registry_order(MODES)
    )
    invalid = [
        {"mode": mode, "scenario": sc, "run": Path(bad["run"] or "?").name, **bad}
        for mode, sc, bad in invalid_runs(scenarios)
    ]
    page = (
        page_templates()
        .get_template("comparison.html.j2")
        .render(
            doc=doc,
            scenario_names=list(scenarios),
            matrix=verdict_matrix(scenarios, modes),
            kinds=VERDICT_KINDS,
            invalid=invalid,
            header=COMPARISON_HEADER,
            rows=comparison_rows(summaries),
            sections=sections,
        )
    )
    with out.open("x", encoding="utf-8") as f:
        f.write(page)
    return text_table(summaries), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    cmp_ = sub.add_parser("compare", help="comparison table and page across runs")
    cmp_.add_argument("runs", nargs="+", type=Path)
    cmp_.add_argument("--out", type=Path)
    args = parser.parse_args()
    missing = [str(d) for d in args.runs if not (d / "summary.json").exists()]
    if missing:
        print(f"no summary.json in: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = args.out or args.runs[0].parent / f"comparison-{utc_stamp()}.html"
    by_pair = summaries_by_pair(args.runs)
    repeats = max(len(runs) for by_mode in by_pair.values() for runs in by_mode.values())
    # how these runs were made (labs at once, CPUs) is not in their folders
    profile = next(iter(next(iter(by_pair.values())).values()))[0]["profile"]
    doc = comparison_doc(by_pair, repeats, profile, None, None)
    table, path = write_comparison(args.runs, out, doc)
    print(table)
    print(f"\ncomparison report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
