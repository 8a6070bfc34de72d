"""The activation baseline's parameters in typed groups, one documented field per knob. No Prefect here.

The flow (`flows/activation_baseline.py`) takes `model`, `variant` and `output_dir` plus one argument per group
below, so the Prefect UI shows one nested form per group; the CLI's flags and their help are generated from
the same fields (`flows/cli_params.py`). A bad value is one `ReasonlabError` naming `group.field`, raised before
any model work. `BaselineConfig` (what the generation loop reads) takes its defaults from these groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from reasonlab.activations import codegen
from reasonlab.errors import ReasonlabError, check_model
from reasonlab.params import Group, one_of, parse_group as parse_any_group

SPLIT_CHOICES = ("validation", "hyperparams", "sae", "all")
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
VARIANTS = ("instruct", "base")
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"

SplitName = Annotated[Literal[SPLIT_CHOICES], one_of("MBPP split", SPLIT_CHOICES)]
DtypeName = Annotated[Literal[DTYPE_CHOICES], one_of("dtype", DTYPE_CHOICES)]
Device = Annotated[str, Field(pattern=DEVICE_PATTERN)]


class Problems(Group):
    """Which MBPP problems: a split, and a range of it."""

    mbpp_source: str | None = Field(None, description="a .parquet/.jsonl path (a ready split such as "
                                    "validation_mbpp.parquet, or the full MBPP to split), 'hub', or empty for the "
                                    "full MBPP from reasonlab.datasets (stored, mirror, else the Hub)")
    split: SplitName = Field("validation", description="validation (388 problems), hyperparams (97), sae (489) "
                                                       "or all")
    start: int = Field(0, ge=0, description="first index into the split (0-based, inclusive)")
    end: int | None = Field(None, ge=0, description="last index into the split, inclusive (default: the last)")


class Capture(Group):
    """Where residuals are captured."""

    top_features: str | None = Field(None, description="a top_20_features.json whose best correct/incorrect "
                                     "layers are captured (default: data/phase2_10/ then data/phase2_5/)")
    layers: list[int] | None = Field(None, min_length=1, description="capture these decoder layers instead of "
                                                                     "top_features' (default: none given)")
    capture_generated: bool = Field(False, description="also save the residual at every generated token "
                                    "([T, D] per layer), not only at the last prompt token")


class Generation(Group):
    """How each problem is generated (greedy, temperature 0)."""

    max_new_tokens: int = Field(2000, ge=1, description="token limit per completion")
    batch_size: int = Field(8, ge=1, description="problems per generate call (left-padded)")
    system_prompt: str = Field("", description="system turn under the chat template (empty: none)")
    generation_timeout_s: float | None = Field(None, gt=0, description="wall-clock limit of one generate call, "
                                               "seconds (default: none); cut rows get hit_time_limit")


class Robustness(Group):
    """Checkpoints, retries, limits and memory watch."""

    checkpoint_every: int = Field(50, ge=1, description="tasks between checkpoints, exactly")
    max_attempts: int = Field(2, ge=1, description="tries per problem whose generation fails")
    sandbox_timeout_s: float = Field(10.0, gt=0, description="wall-clock limit per program in the sandbox, seconds")
    memory_warn_fraction: float = Field(0.85, gt=0, le=1, description="warn when the machine's RAM in use passes "
                                                                      "this share at a checkpoint")
    allow_unconfined_reads: bool = Field(False, description="UNSAFE: run generated code even where the sandbox "
                                         "cannot keep it from reading the host's files (no bubblewrap and not root); "
                                         "off: such a machine refuses, saying what to install")


class Placement(Group):
    """Devices and shards."""

    shards: int = Field(1, ge=1, description="ranges processed as separate gpu-tagged tasks, then merged")
    device: Device = Field("auto", description="auto, cpu, mps, cuda or cuda:N for every shard")
    devices: list[Device] | None = Field(None, min_length=1, description="one device per shard, overriding device "
                                                                         "and shards (default: none given)")
    dtype: DtypeName = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32")


GROUPS: dict[str, type[Group]] = {"problems": Problems, "capture": Capture, "generation": Generation,
                                  "robustness": Robustness, "placement": Placement}


def parse_group(name: str, value: Any) -> Any:
    """The group `name` from a model, a (partial) mapping or None (all defaults); one error naming the field."""
    return parse_any_group(GROUPS, name, value, "activation-baseline parameters")


def _default(group: type[Group], name: str) -> Any:
    return group.model_fields[name].default


@dataclass(frozen=True)
class BaselineConfig:
    """What the generation loop reads: the settings that decide a row plus how the loop runs.

    Group-backed fields take their defaults (and bounds) from `Generation` / `Robustness` / `Capture`.
    Library-only knobs: sandbox_workers (parallel sandbox programs; None: the sandbox's choice),
    max_prompt_tokens (longer prompts are excluded; None: no limit), use_chat_template (None: when the
    tokenizer has a template).
    """

    max_new_tokens: int = _default(Generation, "max_new_tokens")
    batch_size: int = _default(Generation, "batch_size")
    capture_generated: bool = _default(Capture, "capture_generated")
    system_prompt: str = _default(Generation, "system_prompt")
    checkpoint_every: int = _default(Robustness, "checkpoint_every")
    max_attempts: int = _default(Robustness, "max_attempts")
    sandbox_timeout_s: float = _default(Robustness, "sandbox_timeout_s")
    sandbox_workers: int | None = None
    max_prompt_tokens: int | None = None
    generation_timeout_s: float | None = _default(Generation, "generation_timeout_s")
    use_chat_template: bool | None = None
    memory_warn_fraction: float = _default(Robustness, "memory_warn_fraction")
    allow_unconfined_reads: bool = _default(Robustness, "allow_unconfined_reads")

    def __post_init__(self):
        # the groups hold the bounds: check the group-backed fields against them, one error naming the field
        for group in (Generation, Robustness):
            check_model(group, {k: getattr(self, k) for k in group.model_fields}, "activation baseline settings")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ReasonlabError(f"max_prompt_tokens must be a positive integer, got {self.max_prompt_tokens!r}")

    @classmethod
    def from_groups(cls, generation: Generation, robustness: Robustness, capture: Capture,
                    use_chat_template: bool | None) -> "BaselineConfig":
        return cls(**generation.model_dump(), **robustness.model_dump(), capture_generated=capture.capture_generated,
                   use_chat_template=use_chat_template)

    def generation(self) -> codegen.GenerationConfig:
        return codegen.GenerationConfig(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                        capture_generated=self.capture_generated, system_prompt=self.system_prompt,
                                        max_time_s=self.generation_timeout_s,
                                        use_chat_template=self.use_chat_template)

    def to_dict(self) -> dict:
        return asdict(self)
