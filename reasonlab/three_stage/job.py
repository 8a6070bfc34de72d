"""What the three-stage flow does besides calling its stages: check the data, name each stage's folder, pick
the reward models' start models, and turn the stages' results into the job's results, its paired answer to
"does the order matter?" and its summary row (the report is `report.py`). No Prefect here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasonlab import stats
from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_json
from reasonlab.models import ResolvedModel
from reasonlab.params import Group
from reasonlab.three_stage.corpus import load_corpus
from reasonlab.three_stage.reward_model import prepare_pairs
from reasonlab.three_stage.sft_pairs import load_sft_pairs

Groups = dict[str, Group]


def check_data(groups: Groups, base_name: str, chat_template: bool) -> None:
    """Load and validate every enabled stage's data, and the chat template the settings need: one
    `ReasonlabError` before any training."""
    pre, sft, reward, dpo = groups["pretrain"], groups["sft"], groups["reward"], groups["dpo"]
    if pre.enabled:
        load_corpus(pre.corpus, pre.text_field, pre.heldout_fraction, pre.seed)
    if sft.enabled:
        load_sft_pairs(sft)
    prepare_pairs(reward)
    if not chat_template and ((sft.enabled and sft.use_chat_template) or reward.use_chat_template or dpo.enabled):
        raise ReasonlabError(f"model {base_name!r} has no chat template: set sft.use_chat_template and "
                             "reward.use_chat_template to false (and leave dpo off)")


def stage_dir(run_dir: Path, stage: str, start: ResolvedModel, settings: dict[str, Any]) -> str:
    """A stage's checkpoint folder: keyed by its start model's fingerprint and its own settings."""
    return str(run_dir / stage / sha256_json([start.fingerprint, settings])[:16])


def report_dir(run_dir: Path, base: ResolvedModel, groups: Groups) -> Path:
    return run_dir / "reports" / sha256_json([base.fingerprint, {k: g.model_dump() for k, g in groups.items()}])[:16]


def reward_runs(groups: Groups, base: ResolvedModel, staged: ResolvedModel) -> list[tuple[str, ResolvedModel, Group]]:
    """[(start name, start model, reward settings)]: `reward.start_from`, and with run.compare_order the other
    start too (the same data, budget and seed)."""
    reward = groups["reward"]
    names = [reward.start_from]
    if groups["run"].compare_order:
        names += [n for n in ("staged", "base") if n not in names]
    return [(n, staged if n == "staged" else base, reward.model_copy(update={"start_from": n})) for n in names]


def order_comparison(reward: dict[str, dict]) -> dict[str, Any] | None:
    """"Does the order matter?" on the same held-out pairs: the staged reward model against the one from the base
    model, per pair right (r_chosen > r_rejected, ties wrong) or wrong. McNemar's exact test on the pairs only one
    of them gets right, and the accuracy difference staged − base with a paired bootstrap 95 % CI. None without
    both reward models."""
    if not {"staged", "base"} <= set(reward):
        return None
    staged, base = reward["staged"], reward["base"]
    if staged.get("heldout_fingerprint") != base.get("heldout_fingerprint"):
        return {"paired": False, "note": "the two reward models scored different held-out pairs (their tokenizers "
                                         "differ): no paired comparison"}
    a, b = (_right(r["rewards"]) for r in (staged, base))
    test = stats.mcnemar(a, b)
    return {"paired": True, "n": len(a), "accuracy_staged": sum(a) / len(a), "accuracy_base": sum(b) / len(b),
            "accuracy_diff": stats.paired_bootstrap([float(x) for x in a], [float(x) for x in b]),
            "mcnemar": {"only_staged": test["only_a"], "only_base": test["only_b"], "p_value": test["p_value"]}}


def _right(rewards: dict[str, list[float]]) -> list[bool]:
    return [c > r for c, r in zip(rewards["chosen"], rewards["rejected"])]


def results(base: ResolvedModel, groups: Groups, pretrain: dict | None, sft: dict | None, reward: dict[str, dict],
            dpo: dict | None) -> dict[str, Any]:
    """The job's results: every stage's output, the parameters, and the paired order comparison."""
    return {"base_model": base.to_dict(), "parameters": {k: g.model_dump() for k, g in groups.items()},
            "pretrain": pretrain, "sft": sft, "reward": reward, "dpo": dpo, "order": order_comparison(reward)}


def summary_row(out: dict[str, Any]) -> dict[str, Any]:
    """The figures a sweep compares, one row per run (None where a stage did not run): the main reward model's
    held-out accuracy with its Wilson 95 % CI and margin, stage 1's perplexity and stage 2's loss before/after,
    and the order comparison."""
    main = out["reward"][out["parameters"]["reward"]["start_from"]]
    h, pre, sft, order = main["heldout"], out["pretrain"] or {}, out["sft"] or {}, out["order"] or {}
    diff = order.get("accuracy_diff") or {}
    return {"reward_from": main["start_from"], "rm_pairs": h["n"], "rm_accuracy": h["accuracy"],
            "rm_accuracy_low": h["ci_low"], "rm_accuracy_high": h["ci_high"], "rm_margin": h["margin"],
            "ppl_before": pre.get("perplexity_before"), "ppl_after": pre.get("perplexity_after"),
            "sft_loss_before": sft.get("heldout_loss_before"), "sft_loss_after": sft.get("heldout_loss_after"),
            "order_diff": diff.get("diff"), "order_diff_low": diff.get("low"), "order_diff_high": diff.get("high"),
            "order_p": (order.get("mcnemar") or {}).get("p_value")}
