"""The three-stage report, answer first: one narrow line per reward model (held-out accuracy with its Wilson 95 %
CI, margin, pairs, and the paired order test staged − base), the order test's verdict, one picture (held-out
accuracy over training), then every stage's figures. `out` is `job.results(...)`. No Prefect."""

from __future__ import annotations

from typing import Any

from reasonlab.markdown import table

ALPHA = 0.05  # the order test's level


def order_verdict(order: dict[str, Any] | None) -> str:
    """One sentence: does the order matter, by McNemar's exact test on the same held-out pairs."""
    if not order:
        return "Does the order matter? Not tested (run.compare_order is off)."
    if not order["paired"]:
        return f"Does the order matter? Not tested: {order['note']}."
    d, p = order["accuracy_diff"], order["mcnemar"]["p_value"]
    figures = (f"staged − base {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], McNemar p = {p:.3g}, "
               f"n = {order['n']} held-out pairs")
    if p < ALPHA:
        better = "the staged reward model (pretrain → SFT → RM)" if d["diff"] > 0 else "the reward model from the base"
        return f"Does the order matter? **Yes**: {better} ranks more held-out pairs right ({figures})."
    return f"Does the order matter? **No detectable difference** at p < {ALPHA} ({figures})."


def headline_rows(out: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per reward model, the one the settings name first; the order test on the staged model's row."""
    main = out["parameters"]["reward"]["start_from"]
    order = out["order"] or {}
    rows = []
    for name in sorted(out["reward"], key=lambda n: n != main):
        h = out["reward"][name]["heldout"]
        row = {"from": name, "accuracy": f"{h['accuracy']:.3f} [{h['ci_low']:.3f}, {h['ci_high']:.3f}]",
               "margin": f"{h['margin']:+.3f}", "pairs": h["n"], "order": None, "p": None}
        if name == "staged" and order.get("paired"):
            d = order["accuracy_diff"]
            row.update(order=f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]",
                       p=f"{order['mcnemar']['p_value']:.3g}")
        rows.append(row)
    return rows


def headline_markdown(out: dict[str, Any]) -> str:
    """Six short columns, so the whole line fits the UI's artifact page (about 80 characters), then the order
    test's verdict."""
    return ("Reward models, held-out pairwise accuracy (ties wrong; 95 % CI: Wilson), mean margin r(chosen) − "
            "r(rejected), and the order test staged − base on the same pairs (paired bootstrap CI, McNemar):\n\n"
            + table(headline_rows(out), {"from": "RM from", "accuracy": "Accuracy [95 % CI]", "margin": "Margin",
                                         "pairs": "Pairs", "order": "Staged − base", "p": "McNemar p"},
                    align="lrrrrr") + "\n" + order_verdict(out["order"]) + "\n")


def report_markdown(out: dict[str, Any], image: str | None = None, more_images: dict[str, str] | None = None) -> str:
    """The answer, the picture (`image`: markdown showing it), every stage's figures, then `more_images`
    ({title: markdown showing it})."""
    parts = ["# Three-stage training", "", headline_markdown(out)]
    if image:
        parts += [image, ""]
    parts.append(detail_markdown(out))
    if more_images:
        parts += ["## More plots", "", *(f"### {k}\n\n{v}\n" for k, v in more_images.items())]
    return "\n".join(parts) + "\n"


def detail_markdown(out: dict[str, Any]) -> str:
    """Every stage's figures: perplexity and loss before/after, each reward model's, the order test, DPO."""
    lines = ["## Every stage", ""]
    if out["pretrain"]:
        p = out["pretrain"]
        lines.append(f"- Stage 1 ({p['init']}, {p['corpus']['source']}): held-out perplexity "
                     f"{p['perplexity_before']:.2f} -> {p['perplexity_after']:.2f} ({p['steps']} steps)")
    if out["sft"]:
        s = out["sft"]
        lines.append(f"- Stage 2 (SFT, {s['data']['train_pairs']} pairs): held-out loss "
                     f"{s['heldout_loss_before']:.4f} -> {s['heldout_loss_after']:.4f} ({s['steps']} steps)")
    lines += ["", "| reward model from | held-out accuracy | 95 % CI | mean margin | BT loss | pairs | steps |",
              "|---|---|---|---|---|---|---|"]
    for name, r in out["reward"].items():
        h = r["heldout"]
        lines.append(f"| {name} | {h['accuracy']:.3f} | [{h['ci_low']:.3f}, {h['ci_high']:.3f}] | {h['margin']:+.3f} "
                     f"| {h['loss']:.4f} | {h['n']} | {r['steps']} |")
    lines += order_lines(out["order"])
    if out["dpo"]:
        d = out["dpo"]
        lines.append(f"\n- Stage 4 (DPO): log-prob margin {d['logp_margin_before']:+.3f} -> "
                     f"{d['logp_margin_after']:+.3f}; implicit-reward accuracy {d['implicit_reward']['accuracy']:.3f}")
    return "\n".join(lines) + "\n"


def order_lines(order: dict[str, Any] | None) -> list[str]:
    if not order:
        return []
    if not order["paired"]:
        return ["", f"Order test: {order['note']}"]
    d, m = order["accuracy_diff"], order["mcnemar"]
    return ["", f"Order test: on the same {order['n']} held-out pairs, accuracy staged − base "
                f"{d['diff']:+.3f} (paired bootstrap 95 % CI [{d['low']:+.3f}, {d['high']:+.3f}]); right only from "
                f"staged {m['only_staged']}, only from base {m['only_base']}, McNemar exact p = {m['p_value']:.3g}."]
