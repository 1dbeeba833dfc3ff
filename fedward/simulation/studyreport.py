"""``fedward report RUN_DIR``: one self-contained HTML page (and its JSON) for a study.

A run folder holds a ``metrics.json`` (``fedward simulate`` and ``fedward up``
write one; ``kind`` says which); a folder of run folders is one report with a
line per strategy. The page has no external resources: plots are inline SVG
(matplotlib), so it opens from an e-mail attachment or an air-gapped machine.
A small inline script marks each plot ``data-rendered="yes"`` once the browser
has laid it out with a non-empty box (the headless-browser test reads that).

Plots: held-out accuracy against elapsed time per strategy (step-wise: the
model's accuracy holds until the next evaluation, so the drawn crossing of the
target is the table's); participation and staleness by device class; bytes on
the wire; training memory by class against the class budget; epsilon over
elapsed time per device class (DP runs).
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedward.errors import SimulationError  # noqa: E402


class ReportError(SimulationError, ValueError):
    """A folder that holds no run this command can report on."""


def find_runs(folder: Path) -> list[Path]:
    """``metrics.json`` of the run in ``folder``, or of each run one level below
    (a folder holding a ``fedward bench`` report is read as one run per row)."""
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such folder")
    own = folder / "metrics.json"
    if own.exists():
        return [own]
    found = sorted(p for p in folder.glob("*/metrics.json"))
    if not found:
        raise ReportError(
            f"{folder}: no metrics.json here or one level down; point at a folder that "
            "fedward simulate or fedward up wrote"
        )
    return found


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or "result" not in data:
        raise ReportError(f"{path}: not a fedward metrics.json (no 'result')")
    return data


def _bench_reports(folder: Path) -> list[Path]:
    """``fedward bench`` reports in ``folder`` (a JSON with ``strategies`` rows)."""
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("strategies"), dict):
            found.append(path)
    return found


def _metrics_files(folder: Path) -> list[dict[str, Any]]:
    """Each run as a metrics.json would hold it: simulate/up runs, or a bench's rows."""
    benches = [] if (folder / "metrics.json").exists() else _bench_reports(folder)
    if not benches:
        return [{**_load(path), "_folder": str(path.parent)} for path in find_runs(folder)]
    out = []
    for path in benches:
        bench = json.loads(path.read_text())
        settings = bench.get("scenario", {}).get("settings", {})
        for name, row in bench["strategies"].items():
            out.append(
                {
                    "kind": "simulation",
                    "study": bench.get("scenario", {}).get("name", path.stem),
                    "scenario": settings,
                    "result": {"run": name, **row},
                    "_folder": str(path),
                }
            )
    return out


def report_data(folder: Path) -> dict[str, Any]:
    """What the page shows, as JSON (also written beside it)."""
    runs: list[dict[str, Any]] = []
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such folder")
    for m in _metrics_files(folder):
        r = m["result"]
        label = r.get("run", "run")
        if any(x["label"] == label for x in runs):
            label = f"{label} ({Path(m['_folder']).name})"
        runs.append(
            {
                "label": label,
                "kind": m.get("kind", "simulation"),
                "study": m.get("study", r.get("scenario", "")),
                "folder": m["_folder"],
                "target_accuracy": m.get("scenario", {}).get("target_accuracy"),
                "time_axis": "virtual s"
                if m.get("kind", "simulation") == "simulation"
                else "wall s",
                "series": [
                    {"t": p.get("t", 0.0), "accuracy": p["accuracy"], "updates": p["updates"]}
                    for p in r.get("series", [])
                ],
                "summary": {
                    k: r.get(k)
                    for k in (
                        "final_accuracy",
                        "time_to_target_s",
                        "updates",
                        "merges",
                        "failed_tasks",
                        "upload_bytes_per_update",
                        "download_bytes_total",
                        "virtual_time_s",
                        "wall_s",
                        "exhausted_devices",
                    )
                },
                "upload_bytes_total": (r.get("upload_bytes_per_update") or 0)
                * (r.get("updates") or 0),
                "by_class": r.get("by_class", {}),
                "epsilon_series": r.get("epsilon_series", []),
                "privacy": r.get("privacy", {}),
            }
        )
    return {"folder": str(folder), "runs": runs}


# -- plots (inline SVG) -------------------------------------------------------------


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype


def _accuracy_plot(data: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=100)
    target = None
    for run in data["runs"]:
        pts = run["series"]
        if not pts:
            continue
        ax.step(
            [p["t"] for p in pts],
            [p["accuracy"] for p in pts],
            where="post",
            label=run["label"],
            linewidth=1.4,
        )
        target = target or run["target_accuracy"]
    if target:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    axis = data["runs"][0]["time_axis"] if data["runs"] else "s"
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel(f"elapsed time ({axis}; linear to 10 s, then log)")
    ax.set_ylabel("held-out accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _svg(fig)


def _class_bars(
    data: dict[str, Any], keys: list[tuple[str, str]], ylabel: str, *, log: bool = False
) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    groups = [(run["label"], cls, v) for run in data["runs"] for cls, v in run["by_class"].items()]
    labels = [f"{run}\n{cls}" for run, cls, _ in groups]
    width = 0.8 / max(len(keys), 1)
    for i, (key, name) in enumerate(keys):
        values = [float(v.get(key) or 0) for _, _, v in groups]
        ax.bar([x + i * width for x in range(len(groups))], values, width=width, label=name)
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(groups))], labels, fontsize=7)
    ax.set_ylabel(ylabel)
    if log:  # budgets span 640 KiB to 64 MiB
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def _bytes_plot(data: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=100)
    names = [run["label"] for run in data["runs"]]
    up = [run["upload_bytes_total"] / 1e6 for run in data["runs"]]
    down = [(run["summary"].get("download_bytes_total") or 0) / 1e6 for run in data["runs"]]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], up, width=0.4, label="upload (updates)")
    ax.bar([x + 0.2 for x in xs], down, width=0.4, label="download (models)")
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("MB on the wire (encoded frames)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def _epsilon_plot(data: dict[str, Any]) -> str | None:
    rows = [(run, e) for run in data["runs"] for e in run["epsilon_series"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    lines: dict[str, tuple[list[float], list[float]]] = {}
    for run in data["runs"]:
        latest: dict[str, dict[str, float]] = {}
        for e in sorted(run["epsilon_series"], key=lambda e: e["t"]):
            latest.setdefault(e["class"], {})[e["device"]] = e["epsilon"]
            ts, ys = lines.setdefault(f"{run['label']} {e['class']} (max)", ([], []))
            ts.append(e["t"])
            ys.append(max(latest[e["class"]].values()))
        budget = run["privacy"].get("epsilon_budget")
        if budget:
            ax.axhline(
                budget, color="grey", linestyle="--", linewidth=1, label=f"budget {budget:g}"
            )
    for label, (ts, ys) in lines.items():
        ax.step(ts, ys, where="post", label=label, linewidth=1.3)
    ax.set_xlabel(f"elapsed time ({data['runs'][0]['time_axis']})")
    ax.set_ylabel("cumulative epsilon (device max)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


# -- the page --------------------------------------------------------------------------

_CHECK = """
<script>
window.addEventListener('load', function () {
  var n = 0;
  document.querySelectorAll('figure.plot').forEach(function (fig) {
    var svg = fig.querySelector('svg');
    var box = svg ? svg.getBoundingClientRect() : null;
    var drawn = svg ? svg.querySelectorAll('path, use, rect').length : 0;
    var ok = box && box.width > 50 && box.height > 50 && drawn > 5;
    fig.setAttribute('data-rendered', ok ? 'yes' : 'no');
    if (ok) { n += 1; }
  });
  document.body.setAttribute('data-plots-rendered', String(n));
});
</script>
"""


def _fmt(value: Any, spec: str = ",.4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return format(value, spec)
    return html.escape(str(value))


def _table(data: dict[str, Any]) -> str:
    head = (
        "<tr><th>strategy</th><th>kind</th><th>final accuracy</th><th>time to target</th>"
        "<th>updates</th><th>merges</th><th>upload B/update</th><th>exhausted devices</th></tr>"
    )
    rows = []
    for run in data["runs"]:
        s = run["summary"]
        rows.append(
            f"<tr><td>{html.escape(run['label'])}</td><td>{run['kind']}</td>"
            f"<td>{_fmt(s.get('final_accuracy'), '.4f')}</td>"
            f"<td>{_fmt(s.get('time_to_target_s'), ',.0f')} {run['time_axis']}</td>"
            f"<td>{_fmt(s.get('updates'), 'd')}</td><td>{_fmt(s.get('merges'), 'd')}</td>"
            f"<td>{_fmt(s.get('upload_bytes_per_update'), ',.0f')}</td>"
            f"<td>{_fmt(s.get('exhausted_devices'), 'd')}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _class_table(data: dict[str, Any]) -> str:
    head = (
        "<tr><th>strategy</th><th>class</th><th>devices</th><th>took part</th><th>tasks</th>"
        "<th>accepted</th><th>failed</th><th>staleness mean / max</th>"
        "<th>training memory / budget (B)</th></tr>"
    )
    rows = []
    for run in data["runs"]:
        for cls, v in run["by_class"].items():
            rows.append(
                f"<tr><td>{html.escape(run['label'])}</td><td>{html.escape(cls)}</td>"
                f"<td>{_fmt(v.get('devices'), 'd')}</td>"
                f"<td>{_fmt(v.get('participating_devices'), 'd')}</td>"
                f"<td>{_fmt(v.get('dispatched'), 'd')}</td><td>{_fmt(v.get('accepted'), 'd')}</td>"
                f"<td>{_fmt(v.get('failed'), 'd')}</td>"
                f"<td>{_fmt(v.get('staleness_mean'), '.2f')} / {_fmt(v.get('staleness_max'), 'd')}</td>"
                f"<td>{_fmt(v.get('train_memory_bytes'), ',d')} / "
                f"{_fmt(v.get('memory_budget_bytes'), ',d')}</td></tr>"
            )
    return f"<table>{head}{''.join(rows)}</table>"


def _figure(title: str, svg: str, caption: str) -> str:
    return (
        f'<figure class="plot"><figcaption><b>{html.escape(title)}</b> '
        f"{html.escape(caption)}</figcaption>{svg}</figure>"
    )


def render_html(data: dict[str, Any]) -> str:
    has_classes = any(run["by_class"] for run in data["runs"])
    figures = [
        _figure(
            "Held-out accuracy against elapsed time",
            _accuracy_plot(data),
            "Step-wise: the model's accuracy holds until the next evaluation. Simulated runs "
            "are in virtual seconds (modelled device time), live runs in wall seconds.",
        ),
        _figure("Bytes on the wire", _bytes_plot(data), "Encoded protocol frames, whole run."),
    ]
    if has_classes:
        figures += [
            _figure(
                "Participation by device class",
                _class_bars(
                    data,
                    [("dispatched", "tasks"), ("accepted", "accepted"), ("failed", "failed")],
                    "count",
                ),
                "Tasks dispatched, updates accepted and tasks lost (dropout, refusal).",
            ),
            _figure(
                "Staleness by device class",
                _class_bars(
                    data,
                    [("staleness_mean", "mean"), ("staleness_max", "max")],
                    "server versions behind",
                ),
                "How many merges happened between a device's base model and its update.",
            ),
            _figure(
                "Training memory by device class",
                _class_bars(
                    data,
                    [("train_memory_bytes", "measured step"), ("memory_budget_bytes", "budget")],
                    "bytes (log scale)",
                    log=True,
                ),
                "Measured peak of a real training step of the class's subset vs its budget.",
            ),
        ]
    eps = _epsilon_plot(data)
    if eps is not None:
        figures.append(
            _figure(
                "Privacy spent over elapsed time",
                eps,
                "Highest cumulative epsilon of a device in each class, recomputed by the "
                "coordinator's ledger at every charge.",
            )
        )
    studies = ", ".join(sorted({html.escape(r["study"]) for r in data["runs"]}))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fedward study report: {studies}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f4f4f4; }}
figure.plot {{ margin: 1.5em 0; }} figure.plot svg {{ width: 100%; height: auto; }}
</style></head>
<body data-plots-rendered="0">
<h1>Study report: {studies}</h1>
<p>{len(data["runs"])} run(s) from <code>{html.escape(data["folder"])}</code>. Final accuracy is the
mean held-out accuracy over the last tenth of the updates (tail mean); time to target is the first
evaluation at or above the target.</p>
{_table(data)}
{_class_table(data) if has_classes else ""}
{"".join(figures)}
{_CHECK}
</body></html>
"""


def write_report(folder: Path, *, out: Path | None = None) -> Path:
    """Write ``report.html`` and ``report.json`` into ``out`` (default: ``folder``)."""
    data = report_data(folder)
    target = out or folder
    target.mkdir(parents=True, exist_ok=True)
    (target / "report.json").write_text(json.dumps(data, indent=2))
    page = target / "report.html"
    page.write_text(render_html(data))
    return page
