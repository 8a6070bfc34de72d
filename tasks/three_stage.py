"""The three-stage units of work as Prefect tasks: each a cached, gpu-tagged stage whose result holds a
checkpoint folder. A stage's cache key is its start model (a ResolvedModel: the previous stage's
checkpoint fingerprint), its own settings and its output folder, so changing the reward-model
settings leaves stages 1-2 Cached."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from reasonlab.models import ResolvedModel
from reasonlab.three_stage import dpo, pretrain, reward_model, sft_pairs
from reasonlab.three_stage.config import DPOSettings, PretrainSettings, SFTPairSettings
from reasonlab.three_stage.reward_config import RewardSettings, parse_settings
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
                   dtype: str = "auto") -> dict:
    """Stage 1: continued pretraining (or from scratch); result: checkpoint + held-out perplexity before/after."""
    cfg = parse_settings(PretrainSettings, settings, "pretrain settings")
    out = pretrain.run_pretrain(model, cfg, output_dir, device, dtype,
                                progress=_progress("pretrain-progress", "Stage 1 optimizer steps"))
    get_run_logger().info(f"perplexity {out['perplexity_before']:.2f} -> {out['perplexity_after']:.2f}; "
                          f"checkpoint -> {out['checkpoint']}")
    return out


@task(name="sft-pairs", **task_options(sft_pairs.VERSION, gpu=True, retries=1))
def sft_stage(model: ResolvedModel, settings: dict, output_dir: str, device: str = "auto",
              dtype: str = "auto") -> dict:
    """Stage 2: SFT on (instruction, response) pairs; result: checkpoint + held-out loss before/after."""
    cfg = parse_settings(SFTPairSettings, settings, "sft settings")
    out = sft_pairs.run_sft_pairs(model, cfg, output_dir, device, dtype,
                                  progress=_progress("sft-progress", "Stage 2 optimizer steps"))
    get_run_logger().info(f"held-out loss {out['heldout_loss_before']:.4f} -> {out['heldout_loss_after']:.4f}; "
                          f"checkpoint -> {out['checkpoint']}")
    return out


@task(name="reward-model", **task_options(reward_model.VERSION, gpu=True, retries=1))
def reward_stage(model: ResolvedModel, settings: dict, output_dir: str, device: str = "auto",
                 dtype: str = "auto") -> dict:
    """Stage 3: Bradley-Terry reward model; result: checkpoint + held-out accuracy/CI/margin + rewards."""
    cfg = parse_settings(RewardSettings, settings, "reward settings")
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
    cfg = parse_settings(DPOSettings, settings, "dpo settings")
    rcfg = parse_settings(RewardSettings, reward_settings, "reward settings")
    return dpo.run_dpo(model, cfg, rcfg, output_dir, device, dtype,
                       progress=_progress("dpo-progress", "Stage 4 optimizer steps"))
