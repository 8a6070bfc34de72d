"""Three-stage training: continued pretraining -> SFT -> Bradley-Terry reward model (-> optional DPO).

    python -m flows.three_stage                                     # configs/three_stage_default.yaml
    python -m flows.three_stage --config my.yaml --set reward.learning_rate=1e-4 --set compare_order=false

Each stage is a cached gpu-tagged task whose result is a checkpoint folder; the next stage starts from
that checkpoint's fingerprint, so a rerun that changes only `reward.*` retrains only the reward model.
"Does the order matter?": with `compare_order`, the same reward model (data, budget, seed) is also
trained from the base model, and the two held-out accuracies are reported side by side.
"""

from __future__ import annotations

import argparse
import json

import yaml
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.resolve import resolve_model_ref
from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import sha256_json, write_json
from reasonlab.markdown import table
from reasonlab.models import load_tokenizer, resolve_model
from reasonlab.three_stage import plots
from reasonlab.three_stage.config import ThreeStageConfig, load_config, parse_config
from reasonlab.three_stage.corpus import load_corpus
from reasonlab.three_stage.reward_model import prepare_pairs
from reasonlab.three_stage.sft_pairs import load_sft_pairs
from tasks.artifacts import image_markdown, publish_run_folder
from tasks import three_stage as stages

DEFAULT_CONFIG = "configs/three_stage_default.yaml"


@flow(name="three-stage", log_prints=True)
def three_stage(config: str = DEFAULT_CONFIG, model: str | None = None, overrides: dict | None = None) -> dict:
    """Stage 1 (causal LM on a corpus) -> stage 2 (SFT pairs) -> stage 3 (reward model) [-> stage 4 DPO].

    Args:
        config: YAML config (configs/three_stage_default.yaml documents every field).
        model: base model (registry name, folder, Hub id or block:NAME); overrides the config's `model`.
        overrides: dotted keys over the config, e.g. {"reward.learning_rate": 1e-4, "compare_order": false}.
    """
    cfg = apply_overrides(load_config(paths.find_input(config)), overrides or {})
    base = resolve_model_ref(model or cfg.model)
    check_inputs(cfg, base)  # every data error before any model work
    run_dir = paths.runs_dir() / "three_stage"
    dev = dict(device=cfg.device, dtype=cfg.dtype)

    def out_dir(stage: str, start, settings) -> str:
        return str(run_dir / stage / sha256_json([start.fingerprint, settings.model_dump()])[:16])

    # Stage 1 - continued pretraining (or a tiny model from scratch) on the domain corpus
    stage1 = None
    current = base
    if cfg.pretrain.enabled:
        stage1 = stages.pretrain_stage(base, cfg.pretrain.model_dump(), out_dir("pretrain", base, cfg.pretrain), **dev)
        current = resolve_model(stage1["checkpoint"])

    # Stage 2 - SFT on (instruction, response) pairs, loss on the response only
    stage2 = None
    if cfg.sft.enabled:
        stage2 = stages.sft_stage(current, cfg.sft.model_dump(), out_dir("sft", current, cfg.sft), **dev)
        current = resolve_model(stage2["checkpoint"])
    staged = current

    # Stage 3 - reward model from the stage-2 model; the order check: the same from the base model
    starts = {cfg.reward.start_from: staged if cfg.reward.start_from == "staged" else base}
    if cfg.compare_order:
        starts.setdefault("base", base)
        starts.setdefault("staged", staged)
    reward = {}
    for name, start in starts.items():
        settings = cfg.reward.model_copy(update={"start_from": name})
        reward[name] = stages.reward_stage(start, settings.model_dump(), out_dir("reward", start, settings), **dev)

    # Stage 4 (optional) - DPO from the stage-2 model on the same pairs
    stage4 = None
    if cfg.dpo.enabled:
        stage4 = stages.dpo_stage(staged, cfg.dpo.model_dump(), cfg.reward.model_dump(),
                                  out_dir("dpo", staged, cfg.dpo), **dev)

    results = {"base_model": base.to_dict(), "config": cfg.model_dump(), "pretrain": stage1, "sft": stage2,
               "reward": reward, "dpo": stage4}
    report_dir = run_dir / "reports" / sha256_json([base.fingerprint, cfg.model_dump()])[:16]
    results["files"] = publish(results, report_dir)
    write_json(report_dir / "results.json", results)
    print(summary_markdown(results))
    return {k: v for k, v in results.items() if k != "config"}


def apply_overrides(cfg: ThreeStageConfig, overrides: dict) -> ThreeStageConfig:
    """Dotted keys ("reward.learning_rate") over the config, validated like the YAML."""
    data = cfg.model_dump()
    for key, value in overrides.items():
        node, *rest = key.split(".")
        target = data
        parts = [node, *rest]
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                raise ReasonlabError(f"override {key!r}: {part!r} is not a section of the config")
            target = target[part]
        target[parts[-1]] = value
    return parse_config(data, "three-stage config (with overrides)")


def check_inputs(cfg: ThreeStageConfig, base) -> None:
    """Load and validate every stage's data (and the chat template) before any training."""
    if cfg.pretrain.enabled:
        load_corpus(cfg.pretrain.corpus, cfg.pretrain.text_field, cfg.pretrain.heldout_fraction, cfg.pretrain.seed)
    if cfg.sft.enabled:
        load_sft_pairs(cfg.sft)
    prepare_pairs(cfg.reward)
    needs_template = (cfg.sft.enabled and cfg.sft.use_chat_template) or cfg.reward.use_chat_template or cfg.dpo.enabled
    if needs_template and not getattr(load_tokenizer(base), "chat_template", None):
        raise ReasonlabError(f"model {base.name!r} has no chat template: set sft.use_chat_template and "
                             "reward.use_chat_template to false (and leave dpo off)")


def summary_markdown(results: dict) -> str:
    lines = ["# Three-stage training", ""]
    if results["pretrain"]:
        p = results["pretrain"]
        lines.append(f"- Stage 1 ({p['init']}, {p['corpus']['source']}): held-out perplexity "
                     f"{p['perplexity_before']:.2f} -> {p['perplexity_after']:.2f} ({p['steps']} steps)")
    if results["sft"]:
        s = results["sft"]
        lines.append(f"- Stage 2 (SFT, {s['data']['train_pairs']} pairs): held-out loss "
                     f"{s['heldout_loss_before']:.4f} -> {s['heldout_loss_after']:.4f} ({s['steps']} steps)")
    lines += ["", table([[name, f"{r['heldout']['accuracy']:.3f}",
                          f"[{r['heldout']['ci_low']:.3f}, {r['heldout']['ci_high']:.3f}]",
                          f"{r['heldout']['margin']:+.3f}", f"{r['heldout']['loss']:.4f}", r["heldout"]["n"], r["steps"]]
                         for name, r in results["reward"].items()],
                        ["reward model from", "held-out accuracy", "95 % CI", "mean margin", "BT loss", "pairs",
                         "steps"]).rstrip("\n")]
    if results["dpo"]:
        d = results["dpo"]
        lines.append(f"\n- Stage 4 (DPO): log-prob margin {d['logp_margin_before']:+.3f} -> {d['logp_margin_after']:+.3f}; "
                     f"implicit-reward accuracy {d['implicit_reward']['accuracy']:.3f}")
    return "\n".join(lines) + "\n"


def publish(results: dict, report_dir) -> dict:
    """PNG plots + Prefect artifacts (tables, a markdown report embedding the plots)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    files = {"losses": str(plots.loss_curves(
        {"stage 1 pretrain": results["pretrain"], "stage 2 SFT": results["sft"],
         **{f"stage 3 RM ({k})": v for k, v in results["reward"].items()},
         "stage 4 DPO": results["dpo"]}, report_dir / "loss_curves.png"))}
    before_after = {}
    if results["pretrain"]:
        before_after["stage 1 perplexity"] = (results["pretrain"]["perplexity_before"],
                                              results["pretrain"]["perplexity_after"])
    if results["sft"]:
        before_after["stage 2 held-out loss"] = (results["sft"]["heldout_loss_before"],
                                                 results["sft"]["heldout_loss_after"])
    if before_after:
        files["before_after"] = str(plots.before_after(before_after, "held-out value", "Held-out, before vs after training",
                                                        report_dir / "before_after.png"))
    files["rm_accuracy"] = str(plots.rm_accuracy(results["reward"], report_dir / "rm_accuracy.png"))
    files["reward_histograms"] = str(plots.reward_histograms(results["reward"], report_dir / "reward_histograms.png"))
    create_table_artifact(
        [{"reward model from": k, "accuracy": round(r["heldout"]["accuracy"], 4),
          "ci_low": round(r["heldout"]["ci_low"], 4), "ci_high": round(r["heldout"]["ci_high"], 4),
          "margin": round(r["heldout"]["margin"], 4), "loss": round(r["heldout"]["loss"], 4),
          "pairs": r["heldout"]["n"], "pairs_dropped": r["data"]["pairs_dropped"],
          "over_length (TRL would drop)": r["data"]["train_fit"]["over_length"] + r["data"]["heldout_fit"]["over_length"],
          "checkpoint": r["checkpoint"]} for k, r in results["reward"].items()],
        key="three-stage-reward", description="Stage 3: held-out pairwise accuracy (ties wrong), Wilson 95 % CI")
    create_table_artifact(
        [{"reward model from": k, **e} for k, r in results["reward"].items() for e in r["evaluations"]],
        key="three-stage-rm-evaluations", description="Stage 3: held-out metrics per evaluation")
    create_markdown_artifact(summary_markdown(results) + "\n" + "\n".join(
        f"{image_markdown(path, name)}\n\n`{path}`\n" for name, path in files.items()), key="three-stage-report")
    publish_run_folder(report_dir, key="three-stage-report-folder", description="Plots and metrics of this run")
    return files


def _parse_value(text: str):
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--model", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. reward.learning_rate=1e-4 (repeatable)")
    args = parser.parse_args(argv)
    try:
        overrides = {}
        for item in args.overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ReasonlabError(f"--set {item!r}: use KEY=VALUE")
            overrides[key.strip()] = _parse_value(value)
        out = three_stage(config=args.config, model=args.model, overrides=overrides)
    except ReasonlabError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"files": out["files"],
                      "reward": {k: r["heldout"] for k, r in out["reward"].items()}}, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()
