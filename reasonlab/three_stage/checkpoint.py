"""The manifest of a three-stage checkpoint (written by `reasonlab.training.save_checkpoint`, beside metrics.json).

Every stage names its checkpoint `<start model>-<stage>` and records the settings it ran with, so the next
stage's cache key (the folder's fingerprint) changes whenever they do.
"""

from __future__ import annotations

from pydantic import BaseModel

from reasonlab.models import ResolvedModel


def stage_manifest(start: ResolvedModel, stage: str, settings: BaseModel) -> dict:
    return {"name": f"{start.name}-{stage}", "stage": stage, "base_model": start.to_dict(),
            "settings": settings.model_dump()}
