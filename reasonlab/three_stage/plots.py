"""The three-stage pictures (PNG, matplotlib Agg): loss per stage, perplexity before/after, reward-model
accuracy per evaluation, chosen-vs-rejected reward histograms."""

from __future__ import annotations

from pathlib import Path

from reasonlab.plots import pyplot, save_figure


def loss_curves(stages: dict[str, dict], out: Path | str) -> Path:
    """One panel per stage: training loss per optimizer step."""
    plt = pyplot()
    names = [n for n, r in stages.items() if r and r.get("train_losses")]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = stages[name]["train_losses"]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", lw=1)
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def before_after(values: dict[str, tuple[float, float]], ylabel: str, title: str, out: Path | str) -> Path:
    """One panel per quantity, before vs after (perplexity of stage 1, held-out loss of stage 2): own scales."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(values), figsize=(3.2 * len(values), 3.4), squeeze=False)
    for ax, (label, (before, after)) in zip(axes[0], values.items()):
        ax.bar(["before", "after"], [before, after], color=["tab:blue", "tab:orange"])
        for x, v in enumerate((before, after)):
            ax.annotate(f"{v:.4g}", (x, v), ha="center", va="bottom", fontsize=9)
        low = min(before, after)
        ax.set_ylim(low * 0.9, max(before, after) * 1.04)  # a zoomed axis: the bars' tops differ, not their size
        ax.set_title(label)
        ax.set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def rm_accuracy(runs: dict[str, dict], out: Path | str) -> Path:
    """Held-out accuracy (ties wrong, every evaluation over every held-out pair) per evaluation, one line per
    reward model, with the final 95 % Wilson CI."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, run in runs.items():
        evals = [e for e in run["evaluations"] if e.get("accuracy") is not None]
        line, = ax.plot([e["step"] for e in evals], [e["accuracy"] for e in evals], marker="o", label=name)
        h = run["heldout"]
        below, above = max(0.0, h["accuracy"] - h["ci_low"]), max(0.0, h["ci_high"] - h["accuracy"])  # float noise
        ax.errorbar([evals[-1]["step"]], [h["accuracy"]], yerr=[[below], [above]], color=line.get_color(), capsize=4)
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Reward model: held-out pairwise accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def reward_histograms(runs: dict[str, dict], out: Path | str) -> Path:
    """Held-out rewards of chosen vs rejected replies, one panel per reward model."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.4), squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items()):
        chosen, rejected = run["rewards"]["chosen"], run["rewards"]["rejected"]
        lo, hi = min(chosen + rejected), max(chosen + rejected)
        bins = [lo + (hi - lo) * i / 24 for i in range(25)] if hi > lo else 10
        ax.hist(chosen, bins=bins, alpha=0.55, label=f"chosen (mean {sum(chosen) / len(chosen):.2f})")
        ax.hist(rejected, bins=bins, alpha=0.55, label=f"rejected (mean {sum(rejected) / len(rejected):.2f})")
        ax.set_title(f"{name}: acc {run['heldout']['accuracy']:.1%}")
        ax.set_xlabel("reward")
        ax.set_ylabel("held-out replies")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)
