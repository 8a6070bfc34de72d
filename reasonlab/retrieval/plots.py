"""The experiment's pictures as PNG files (matplotlib, Agg): accuracy per condition, option distributions per
condition for a few questions, the information-gain distribution, the reliability diagram, and the scaling chart
over model sizes."""

from __future__ import annotations

from pathlib import Path

from reasonlab.plots import bars_with_ci, pyplot, save_figure

COLORS = {"none": "#9e9e9e", "none_on_oracle_questions": "#636363", "top1": "#1f77b4", "oracle": "#2ca02c",
          "random_other": "#d62728"}


def _plt():
    return pyplot()


def _color(condition: str) -> str:
    return COLORS.get(condition, "#ff7f0e")  # topK


def _save(fig, dest: Path | str) -> Path:
    fig.tight_layout()
    return save_figure(fig, dest, dpi=100)


def condition_accuracy(conditions: list[dict], metric: str, dest: Path | str, title: str = "",
                       chance: float = 0.25) -> Path:
    """The report's picture: `metric` per condition with its Wilson 95 % CI, each bar labelled right/n; `chance`:
    a uniform guess's accuracy. `conditions`: the summary's condition rows."""
    shown = [c for c in conditions if c.get("n")]
    fig, ax = _plt().subplots(figsize=(1.3 * len(shown) + 2.5, 3.6), dpi=100)
    bars_with_ci(ax, [c["condition"] for c in shown], [c.get(metric) for c in shown],
                 [(c.get(f"{metric}_ci") or [None, None])[0] for c in shown],
                 [(c.get(f"{metric}_ci") or [None, None])[1] for c in shown])
    for x, (patch, c) in enumerate(zip(ax.patches, shown)):
        patch.set_color(_color(c["condition"]))
        if c.get(metric) is not None:
            ax.text(x, 0.01, f"{round(c[metric] * c['n'])}/{c['n']}", ha="center", va="bottom", fontsize=8)
    ax.axhline(chance, color="black", linewidth=0.8, linestyle=":", label=f"chance ({100 * chance:.0f} %)")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{metric} (Wilson 95 % CI)")
    ax.set_title(title or f"{metric} per condition", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, dest)


def option_distributions(questions: list[dict], scored: dict[str, list[dict]], dist: str, dest: Path | str,
                         title: str = "") -> Path:
    """One panel per question: the model's distribution over options under every condition; the gold option starred.
    Top row: the plain letter softmax; bottom row (when debiased): the average over the cyclic orders."""
    plt = _plt()
    conditions = [c for c, rows in scored.items() if rows]
    dists = ["probs"] + ([dist] if dist != "probs" else [])
    fig, axes = plt.subplots(len(dists), len(questions), figsize=(4.2 * len(questions), 3.2 * len(dists)), dpi=100,
                             squeeze=False)
    width = 0.8 / max(len(conditions), 1)
    for r, key in enumerate(dists):
        for ax, q in zip(axes[r], questions):
            letters = list(q["options"])
            for i, c in enumerate(conditions):
                row = next((x for x in scored[c] if x["id"] == q["id"]), None)
                if row is None:
                    continue
                xs = [k + (i - (len(conditions) - 1) / 2) * width for k in range(len(letters))]
                ax.bar(xs, row[key], width=width, label=c, color=_color(c))
            ax.set_xticks(range(len(letters)), [f"{k}*" if k == q["answer"] else k for k in letters])
            ax.set_ylim(0, 1)
            ax.set_title(f"{q['id']}" + (f" ({q['domain']})" if q.get("domain") else "") + f": {key}", fontsize=9)
            ax.set_ylabel("p(option)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or "distribution over options; * = gold", fontsize=10)
    return _save(fig, dest)


def information_gain_hist(info_gain: dict[str, list[float]], dest: Path | str, title: str = "") -> Path:
    """Histogram of per-question H(none) - H(condition), one outline per condition, means marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    values = [v for vs in info_gain.values() for v in vs]
    lo, hi = (min(values), max(values)) if values else (-1.0, 1.0)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
    for c, vs in info_gain.items():
        ax.hist(vs, bins=bins, histtype="step", linewidth=1.6, color=_color(c),
                label=f"{c} (mean {sum(vs) / len(vs):+.3f}, n={len(vs)})")
        ax.axvline(sum(vs) / len(vs), color=_color(c), linestyle=":", linewidth=1)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("information gain H(none) - H(condition), bits")
    ax.set_ylabel("questions")
    ax.set_title(title or "information gain per question", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, dest)


def reliability_diagram(reliability: dict[str, list[dict]], dest: Path | str, title: str = "") -> Path:
    """Accuracy against mean confidence per confidence bin, per condition; the diagonal is perfect calibration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 4.6), dpi=100)
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--", label="calibrated")
    for c, bins in reliability.items():
        pts = [(b["confidence"], b["accuracy"], b["count"]) for b in bins if b["count"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=_color(c), label=c, linewidth=1.2)
            for x, y, n in pts:
                ax.annotate(str(n), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points", color=_color(c))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean top-1 confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(title or "reliability diagram (numbers: questions per bin)", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, dest)


def scaling_chart(points: list[dict], metric: str, dest: Path | str, title: str = "", chance: float = 0.25) -> Path:
    """Accuracy (metric, with its 95 % CI) against parameter count, one line per condition, each labelled with its
    number of questions (the oracle's is the labelled subset); `chance`: a uniform guess's accuracy.

    `points`: [{model, n_params, conditions: [{condition, n, <metric>, <metric>_ci}]}] - measured, one per model."""
    plt = _plt()
    points = sorted(points, key=lambda p: p["n_params"])
    fig, ax = plt.subplots(figsize=(6.8, 4.2), dpi=100)
    names = []
    for p in points:
        for c in p["conditions"]:
            if c.get(metric) is not None and c["condition"] not in names:
                names.append(c["condition"])
    for i, name in enumerate(names):
        xs, ys, err = [], [], [[], []]
        for p in points:
            c = next((c for c in p["conditions"] if c["condition"] == name and c.get(metric) is not None), None)
            if c is None:
                continue
            x = p["n_params"] / 1e6 * (1 + 0.03 * (i - len(names) / 2))  # small offsets so the CIs stay apart
            xs.append(x)
            ys.append(100 * c[metric])
            err[0].append(100 * max(0.0, c[metric] - c[f"{metric}_ci"][0]))  # a bound may sit 1e-17 inside
            err[1].append(100 * max(0.0, c[f"{metric}_ci"][1] - c[metric]))
        ns = sorted({c["n"] for p in points for c in p["conditions"] if c["condition"] == name})
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=_color(name),
                    label=f"{name} (n={'/'.join(map(str, ns))})", linestyle="--" if name.startswith("none") else "-")
    ax.axhline(100 * chance, color="black", linewidth=0.8, linestyle=":", label=f"chance ({100 * chance:.0f} %)")
    ax.set_xscale("log")
    ax.set_xticks([p["n_params"] / 1e6 for p in points], [f"{p['model']}\n{p['n_params'] / 1e6:.0f}M" for p in points],
                  fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{metric} by model size and condition (95 % CIs)", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, dest)
