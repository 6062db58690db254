"""PNG plots of bench.py's rows: per-step time vs T, vs H, vs B, and speedup over the baseline.

How cost grows: per-step time flat in T means the whole run is linear in T;
against H it shows where a kernel leaves its on-chip strategy; against B how
well a step fills the machine. Matplotlib's Agg canvas, no pyplot state.
"""
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

SWEPT = {"steps": "T", "hidden": "H", "batch": "B"}
KEY = ("dtype", "batch", "steps", "hidden", "input")


def _measured(rows):
    return [r for r in rows if r["status"] == "ok" and r.get("median_ms") is not None]


def _fixed_slice(rows, dim):
    """The rows of the setting of the other dimensions that has the most values of dim."""
    others = [k for k in KEY if k != dim and not (dim == "hidden" and k == "input")]   # I follows H by default
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in others), []).append(r)
    best = max(groups.items(), key=lambda kv: (len({r[dim] for r in kv[1]}), kv[0]), default=None)
    if best is None or len({r[dim] for r in best[1]}) < 2:
        return None, None
    fixed = ", ".join(f"{SWEPT.get(k, k)}={v}" for k, v in zip(others, best[0]))
    return best[1], fixed


def _save(fig, path):
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def scaling_plot(rows, dim, title, path):
    """Per-step time (µs, with 20-80% band) against dim, one panel per cell; None if nothing varies."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    panels = [(c,) + _fixed_slice([r for r in rows if r["cell"] == c], dim) for c in cells]
    panels = [p for p in panels if p[1] is not None]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    for i, (cell, sel, fixed) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for provider in dict.fromkeys(r["provider"] for r in sel):
            pts = sorted((r[dim], r["median_ms"] * 1e3 / r["steps"], r["q20_ms"] * 1e3 / r["steps"],
                          r["q80_ms"] * 1e3 / r["steps"]) for r in sel if r["provider"] == provider)
            x, med, lo, hi = zip(*pts)
            ax.plot(x, med, marker="o", label=provider)
            ax.fill_between(x, lo, hi, alpha=0.2)
        ax.set(xscale="log", yscale="log", xlabel=SWEPT[dim], ylabel="time per step (µs)",
               title=f"{cell}  ({fixed})")
        ticks = sorted({r[dim] for r in sel})
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks, [str(v) for v in ticks])
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def speedup_plot(rows, title, path):
    """Baseline time / provider time for every configuration, grouped bars, one panel per cell."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig = Figure(figsize=(max(5.0, 1.0 + 0.5 * len(rows) / max(1, len(cells))), 3.4 * len(cells)),
                 layout="constrained")
    for i, cell in enumerate(cells):
        ax = fig.add_subplot(len(cells), 1, i + 1)
        sel = [r for r in rows if r["cell"] == cell and r.get("ratio") is not None and r["provider"] != r["baseline"]]
        labels = list(dict.fromkeys((r["dtype"], r["batch"], r["steps"], r["hidden"]) for r in sel))
        names = list(dict.fromkeys(r["provider"] for r in sel))
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            by_label = {(r["dtype"], r["batch"], r["steps"], r["hidden"]): 1 / r["ratio"]
                        for r in sel if r["provider"] == name}
            xs = [k + j * width for k, lab in enumerate(labels) if lab in by_label]
            ax.bar(xs, [by_label[lab] for lab in labels if lab in by_label], width, label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(labels))],
                      [f"{d} B{b} T{t} H{h}" for d, b, t, h in labels], rotation=60, ha="right", fontsize=7)
        base = sel[0]["baseline"] if sel else "baseline"
        ax.set(yscale="log", ylabel=f"speedup over {base}", title=cell)
        if names:
            ax.legend(fontsize=7)
    fig.suptitle(title + " (above 1: faster than the baseline)")
    return _save(fig, path)


def write_plots(rows, out_dir, name):
    """Every plot the rows allow, per mode; returns the paths written."""
    rows = _measured(rows)
    written = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode]
        label = {"fwd": "forward", "fwdbwd": "forward + backward"}[mode]
        for dim, letter in SWEPT.items():
            path = scaling_plot(sel, dim, f"{label}: time per step vs {letter}",
                                out_dir / f"{name}_{mode}_time_vs_{letter}.png")
            written += [path] if path else []
        written.append(speedup_plot(sel, f"{label}: speedup", out_dir / f"{name}_{mode}_speedup.png"))
    return written
