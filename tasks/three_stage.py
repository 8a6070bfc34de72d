"""The three-stage units of work as Prefect tasks: each a cached, gpu-tagged stage whose result holds a
checkpoint folder. A stage's cache key is its start model (a ResolvedModel: the previous stage's
checkpoint fingerprint), its own settings and its output folder, so changing the reward-model
settings leaves stages 1-2 Cached. `publish_results` turns the job's results into its artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.artifacts import update_progress_artifact

from reasonlab.io import write_json
from reasonlab.models import ResolvedModel
from reasonlab.three_stage import dpo, job, plots, pretrain, report, reward_model, sft_pairs
from reasonlab.three_stage.params import parse_group
from reasonlab.three_stage.sweep_metrics import SUMMARY_KEY
from tasks.artifacts import image_markdown, publish_run_folder
from tasks.conventions import task_options


def _progress(key: str, description: str):
    """A progress artifact (optimizer steps) and a logger line per logged loss."""
    progress_id = create_progress_artifact(0.0, key=key, description=description)
    logger = get_run_logger()

    def report(step: int, total: int, loss: float | None) -> None:
        update_progress_artifact(progress_id, 100.0 * step / max(total, 1))
        if loss is not None:
            logger.info(f"{key}: step {step}/{total} loss {loss:.4f}")

    return report


@task(name="pretrain", **task_options(pretrain.VERSION, gpu=True, retries=1))
def pretrain_stage(model: ResolvedModel, settings: dict, output_dir: str, device: str = "auto",
                   dtype: str = "auto", scratch: dict | None = None) -> dict:
    """Stage 1: continued pretraining (or from scratch); result: checkpoint + held-out perplexity before/after."""
    cfg = parse_group("pretrain", settings)
    out = pretrain.run_pretrain(model, cfg, output_dir, device, dtype,
                                progress=_progress("pretrain-progress", "Stage 1 optimizer steps"),
                                scratch=parse_group("scratch", scratch))
    get_run_logger().info(f"perplexity {out['perplexity_before']:.2f} -> {out['perplexity_after']:.2f}; "
                          f"checkpoint -> {out['checkpoint']}")
    return out


@task(name="sft-pairs", **task_options(sft_pairs.VERSION, gpu=True, retries=1))
def sft_stage(model: ResolvedModel, settings: dict, output_dir: str, device: str = "auto",
              dtype: str = "auto") -> dict:
    """Stage 2: SFT on (instruction, response) pairs; result: checkpoint + held-out loss before/after."""
    cfg = parse_group("sft", settings)
    out = sft_pairs.run_sft_pairs(model, cfg, output_dir, device, dtype,
                                  progress=_progress("sft-progress", "Stage 2 optimizer steps"))
    get_run_logger().info(f"held-out loss {out['heldout_loss_before']:.4f} -> {out['heldout_loss_after']:.4f}; "
                          f"checkpoint -> {out['checkpoint']}")
    return out


@task(name="reward-model", **task_options(reward_model.VERSION, gpu=True, retries=1))
def reward_stage(model: ResolvedModel, settings: dict, output_dir: str, device: str = "auto",
                 dtype: str = "auto") -> dict:
    """Stage 3: Bradley-Terry reward model; result: checkpoint + held-out accuracy/CI/margin + rewards."""
    cfg = parse_group("reward", settings)
    out = reward_model.run_reward_model(model, cfg, output_dir, device, dtype,
                                        progress=_progress(f"reward-progress-{cfg.start_from}",
                                                           f"Stage 3 optimizer steps (from {cfg.start_from})"))
    h = out["heldout"]
    get_run_logger().info(f"reward model from {cfg.start_from}: held-out accuracy {h['accuracy']:.3f} "
                          f"[{h['ci_low']:.3f}, {h['ci_high']:.3f}], margin {h['margin']:.3f}")
    return out


@task(name="dpo", **task_options(dpo.VERSION, gpu=True, retries=1))
def dpo_stage(model: ResolvedModel, settings: dict, reward_settings: dict, output_dir: str, device: str = "auto",
              dtype: str = "auto") -> dict:
    """Stage 4 (optional): DPO on the reward pairs; result: checkpoint + implicit-reward accuracy before/after."""
    cfg = parse_group("dpo", settings)
    rcfg = parse_group("reward", reward_settings)
    return dpo.run_dpo(model, cfg, rcfg, output_dir, device, dtype,
                       progress=_progress("dpo-progress", "Stage 4 optimizer steps"))


def publish_results(out: dict, report_dir: Path) -> dict:
    """The run's PNGs, results.json, and its artifacts: the summary row a sweep reads, the reward models' table,
    their evaluations, and the report (the answer, the held-out accuracy picture, every stage, the other pictures).
    Returns {name: PNG path}."""
    report_dir.mkdir(parents=True, exist_ok=True)
    files = _figures(out, report_dir)
    write_json(report_dir / "results.json", {**out, "files": files})
    create_table_artifact([job.summary_row(out)], key=SUMMARY_KEY,
                          description="Reward-model held-out accuracy (Wilson 95 % CI), margin, stage 1 perplexity "
                                      "and stage 2 loss before/after, order comparison (staged − base, paired)")
    create_table_artifact(
        [{"reward model from": k, "accuracy": round(r["heldout"]["accuracy"], 4),
          "ci_low": round(r["heldout"]["ci_low"], 4), "ci_high": round(r["heldout"]["ci_high"], 4),
          "margin": round(r["heldout"]["margin"], 4), "loss": round(r["heldout"]["loss"], 4),
          "pairs": r["heldout"]["n"], "pairs_dropped": r["data"]["pairs_dropped"],
          "over_length (TRL would drop)": r["data"]["train_fit"]["over_length"] + r["data"]["heldout_fit"]["over_length"],
          "checkpoint": r["checkpoint"]} for k, r in out["reward"].items()],
        key="three-stage-reward", description="Stage 3: held-out pairwise accuracy (ties wrong), Wilson 95 % CI")
    create_table_artifact(
        [{"reward model from": k, **e} for k, r in out["reward"].items() for e in r["evaluations"]],
        key="three-stage-rm-evaluations", description="Stage 3: held-out figures per evaluation (every pair scored)")
    create_markdown_artifact(report.report_markdown(
        out, image_markdown(files["rm_accuracy"], "reward model held-out accuracy"),
        {name: image_markdown(path, name) for name, path in files.items() if name != "rm_accuracy"}),
        key="three-stage-report")
    publish_run_folder(report_dir, key="three-stage-report-folder", description="Plots and metrics of this run")
    return files


def _figures(out: dict, report_dir: Path) -> dict:
    files = {"losses": str(plots.loss_curves(
        {"stage 1 pretrain": out["pretrain"], "stage 2 SFT": out["sft"],
         **{f"stage 3 RM ({k})": v for k, v in out["reward"].items()}, "stage 4 DPO": out["dpo"]},
        report_dir / "loss_curves.png"))}
    before_after = {}
    if out["pretrain"]:
        before_after["stage 1 perplexity"] = (out["pretrain"]["perplexity_before"], out["pretrain"]["perplexity_after"])
    if out["sft"]:
        before_after["stage 2 held-out loss"] = (out["sft"]["heldout_loss_before"], out["sft"]["heldout_loss_after"])
    if before_after:
        files["before_after"] = str(plots.before_after(before_after, "held-out value",
                                                       "Held-out, before vs after training",
                                                       report_dir / "before_after.png"))
    files["rm_accuracy"] = str(plots.rm_accuracy(out["reward"], report_dir / "rm_accuracy.png"))
    files["reward_histograms"] = str(plots.reward_histograms(out["reward"], report_dir / "reward_histograms.png"))
    return files
