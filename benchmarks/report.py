"""What ``diga bench`` shows and writes: a rich table, bench.json, bench.md and latency.png.

Every writer reads only the JSON-ready result of ``run_bench`` (schema ``diga-bench/1``), so a
report can be redrawn from a saved bench.json. Files are written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from diga.io import atomic_write, atomic_write_json, atomic_write_text

COLUMNS = ("model", "backend", "precision", "status", "frame", "runs at", "p50 ms", "p90 ms",
           "p99 ms", "mean ms", "pre ms", "model ms", "post ms", "images/s", "peak RSS MB",
           "GPU MB", "GFLOP/s", "vs torch", "mIoU", "mIoU13", "agree %")
# COLUMNS by importance for the terminal: the first ALWAYS in any case, then each that still
# fits the window unwrapped (80 columns: about six); shown in COLUMNS' order. bench.md has all
TERMINAL_COLUMNS = ("model", "backend", "precision", "p50 ms", "mIoU", "status", "images/s",
                    "vs torch", "agree %", "mIoU13", "model ms", "pre ms", "post ms", "GPU MB",
                    "p90 ms", "p99 ms", "mean ms", "frame", "runs at", "peak RSS MB", "GFLOP/s")
ALWAYS = 5


def columns_for(result: dict[str, Any], columns: tuple[str, ...]) -> tuple[str, ...]:
    """``columns`` without "GPU MB" when no row ran on a GPU, and without "mIoU13" when no row
    has one (only SYNTHIA's 16-class protocol reports it)."""
    unused = {name for name, key in (("GPU MB", "gpu_memory_mb"), ("mIoU13", "miou13"))
              if all(r.get(key) is None for r in result["rows"])}
    return tuple(c for c in columns if c not in unused)


def short_model(row: dict[str, Any]) -> str:
    """The last two parts of a model path: ``export/model.onnx``, ``checkpoints/last``."""
    parts = Path(row["model"]).parts
    name = "/".join(parts[-2:]) if len(parts) >= 2 else row["model"]
    return f"{name} (compile)" if row.get("compiled") else name


def status_word(row: dict[str, Any]) -> str:
    return row["status"].split(":", 1)[0]


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def row_cells(row: dict[str, Any]) -> dict[str, str]:
    """One row as text cells by column (shared by the terminal table and the Markdown report)."""
    lat = row["latency_ms"] or {}
    parts = row.get("parts_ms") or {}
    shape, run = row["input_shape"], row["run_size"]
    throughput = ", ".join(f"{_num(t['images_per_s'], 1)} @{t['batch']}" for t in row["throughput"])
    ratio = row["latency_vs_torch"]
    return {
        "model": short_model(row), "backend": row["backend"], "precision": row["precision"] or "-",
        "status": status_word(row), "frame": "x".join(map(str, shape[1:3])) if shape else "-",
        "runs at": "x".join(map(str, run)) if run else "-",
        "p50 ms": _num(lat.get("p50")), "p90 ms": _num(lat.get("p90")),
        "p99 ms": _num(lat.get("p99")), "mean ms": _num(lat.get("mean")),
        "pre ms": _num(parts.get("pre")), "model ms": _num(parts.get("model")),
        "post ms": _num(parts.get("post")),
        "images/s": throughput or "-", "peak RSS MB": _num(row["peak_rss_mb"], 0),
        "GPU MB": _num(row["gpu_memory_mb"], 0),
        "GFLOP/s": _num(row["gflops_per_s"], 1),
        "vs torch": f"{ratio:.3g}x" if ratio is not None else "-",
        "mIoU": _num(row["miou"]), "mIoU13": _num(row.get("miou13")),
        "agree %": _num(row["pixel_agreement"], 3),
    }


def reasons(result: dict[str, Any]) -> list[str]:
    """One line per row that did not run, and per note of a row that did."""
    lines = []
    for row in result["rows"]:
        where = f"{short_model(row)} on {row['backend']}"
        if row["status"] != "ok":
            lines.append(f"{where}: {row['status']}")
        lines.extend(f"{where}: {note}" for note in row["notes"])
    return lines


def machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    threads = m["torch_threads"]
    torch_line = (f"torch runs {threads} thread{'' if threads == 1 else 's'}" if threads
                  else "no torch")
    return (f"{m['cpu']} ({m['cpu_count']} CPUs; {torch_line}){gpu}; float32 matmul peak "
            f"{_num(m.get('matmul_gflops'), 1)} GFLOP/s (n={m['matmul_size']}, "
            f"{m.get('matmul_threads', '?')} threads); torch {m['torch'] or '-'}, "
            f"onnxruntime {m['onnxruntime']}")


def settings_line(result: dict[str, Any]) -> str:
    s = result["settings"]
    images = "all" if s["max_images"] is None else f"first {s['max_images']}"
    return (f"warm-up {s['warmup']} runs, then {s['time_budget_s']} s per loop "
            f"({s['min_iters']}..{s['max_iters']} runs); latency at batch 1, throughput at "
            f"{', '.join(map(str, s['batch_sizes']))}; mIoU on {images} target val images; "
            f"agreement: % of pixels labelled as the fp32 PyTorch checkpoint labels them")


def _table(result: dict[str, Any], columns: tuple[str, ...]) -> Table:
    table = Table(title="diga bench", caption=escape(machine_line(result)))
    for name in columns:
        table.add_column(name, justify="left" if name in ("model", "backend", "precision",
                                                          "status") else "right",
                         overflow="fold" if name == "model" else "ellipsis")
    styles = {"ok": "", "unavailable": "dim", "error": "red"}
    for row in result["rows"]:
        cells = row_cells(row)
        table.add_row(*(escape(cells[c]) for c in columns),
                      style=styles.get(status_word(row), ""))
    return table


def terminal_columns(result: dict[str, Any], console: Console) -> tuple[str, ...]:
    """The columns that fit the console's width unwrapped (``TERMINAL_COLUMNS``' first
    ``ALWAYS`` in any case): a table squeezed into 80 columns showed '…' in every cell."""
    wanted = columns_for(result, TERMINAL_COLUMNS)
    chosen = list(wanted[:ALWAYS])
    unlimited = console.options.update_width(10_000)
    for name in wanted[ALWAYS:]:
        trial = _table(result, tuple(c for c in COLUMNS if c in chosen or c == name))
        if Measurement.get(console, unlimited, trial).maximum <= console.width:
            chosen.append(name)
    return tuple(c for c in COLUMNS if c in chosen)


def print_table(result: dict[str, Any], console: Console, full_table: str | None = None) -> None:
    """The table with the columns that fit the terminal, a line naming the others and where
    they are (``full_table``: the report that has them all), and the rows' reasons."""
    columns = terminal_columns(result, console)
    console.print(_table(result, columns))
    hidden = [c for c in columns_for(result, COLUMNS) if c not in columns]
    if hidden:
        where = full_table or "bench.md and bench.json with --out DIR"
        console.print(f"[dim]not shown at this width (see {escape(where)}): "
                      f"{escape(', '.join(hidden))}[/]", highlight=False)
    for line in reasons(result):
        console.print(f"  [dim]{escape(line)}[/]", highlight=False, soft_wrap=True)


def to_markdown(result: dict[str, Any], plot: bool = True) -> str:
    flops = {short_model(r): r["flops_per_image"] for r in result["rows"] if r["flops_per_image"]}
    lines = ["# diga bench", "", f"Run {result['created']} on {machine_line(result)}.", ""]
    load, cpus = result["machine"].get("load_average_1m"), result["machine"].get("cpu_count")
    if load is not None and cpus and load > 0.75 * cpus:
        lines += [f"**The machine was busy** (load average {load:.1f} on {cpus} CPUs when the "
                  "bench started): latencies are inflated, PyTorch's most (its threads wait for "
                  "each other). Measure again on a quiet machine before quoting them.", ""]
    columns = columns_for(result, COLUMNS)
    lines += [settings_line(result) + ".", "",
              "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in result["rows"]:
        cells = [row_cells(row)[c].replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "p50/p90/p99/mean: end-to-end latency at batch 1 (ms, warm-up excluded): a "
              "target frame at its own size (frame) in, labels at that size out, the model run "
              "at its run size (runs at). pre / model / post (p50, ms): the same work timed in "
              "its parts: host work before the model call, the call (a frame graph resizes, "
              "normalises, upsamples and takes the argmax inside it), host work after it. "
              "images/s @B: end-to-end throughput with B frames per call. peak RSS: the "
              "process's resident-memory peak while the row loaded and ran (torch and the data "
              "included); GPU MB: device memory the row added. GFLOP/s: the network's counted "
              "FLOPs per image / the model call's p50 (convolutions done with fewer operations "
              "than counted, e.g. Winograd's, can exceed the float32 matmul peak). vs torch: "
              "end-to-end p50 over the eager PyTorch row of the same checkpoint.", ""]
    if flops:
        lines += ["## FLOPs per image", ""]
        lines += [f"- {name}: {value / 1e9:.3f} GFLOP" for name, value in flops.items()]
        lines.append("")
    notes = reasons(result)
    if notes:
        lines += ["## Rows not measured, and notes", ""] + [f"- {n}" for n in notes] + [""]
    if plot:
        lines += ["![latency](latency.png)", ""]
    return "\n".join(lines)


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """p50 bars with p90 / p99 marks per measured row, and mIoU against p50 where known."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    rows = [r for r in result["rows"] if r["latency_ms"]]
    labels = [f"{short_model(r)}\n{r['backend']} {r['precision']}" for r in rows]
    with_miou = [r for r in rows if r["miou"] is not None]
    fig = Figure(figsize=(11, max(2.5, 0.55 * len(rows) + 1.5)), layout="constrained")
    axes = fig.subplots(1, 2 if with_miou else 1, squeeze=False)[0]
    ax = axes[0]
    if rows:
        y = list(range(len(rows)))
        p50 = [r["latency_ms"]["p50"] for r in rows]
        ax.barh(y, p50, color="tab:blue", label="p50")
        ax.scatter([r["latency_ms"]["p90"] for r in rows], y, marker="|", s=200, color="tab:orange",
                   label="p90", zorder=3)
        ax.scatter([r["latency_ms"]["p99"] for r in rows], y, marker="x", color="tab:red",
                   label="p99", zorder=3)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no row could be measured", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("latency per image at batch 1 (ms)")
    ax.set_title("latency")
    if with_miou:
        ax2 = axes[1]
        for r in with_miou:
            ax2.scatter(r["latency_ms"]["p50"], r["miou"], s=40)
            ax2.annotate(f"{r['backend']} {r['precision']}", (r["latency_ms"]["p50"], r["miou"]),
                         fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax2.set_xlabel("p50 latency (ms)")
        ax2.set_ylabel("target val mIoU (%)")
        ax2.set_title("accuracy vs latency")
        ax2.grid(alpha=0.3)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))


def report_paths(out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md",
            "plot": out_dir / "latency.png"}


def write_reports(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """bench.json, bench.md and latency.png in ``out_dir``; returns their paths by kind."""
    paths = report_paths(out_dir)
    atomic_write_json(paths["json"], result)
    try:
        import matplotlib  # noqa: F401  (a runtime-only install may lack it: no plot then)
    except ImportError:
        del paths["plot"]
    atomic_write_text(paths["markdown"], to_markdown(result, plot="plot" in paths))
    if "plot" in paths:
        plot_latency(result, paths["plot"])
    return paths
