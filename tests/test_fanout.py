"""Experiments without reloading: the base restored in memory gives what a fresh load + saved checkpoint gives,
and experiments fanned out over worker processes give what they give one after another, through real Prefect."""

from pathlib import Path

import pytest
from prefect import flow
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

from reasonlab.concept_sft import evaluate, experiment
from reasonlab.concept_sft.params import ExperimentParams, FormatParams
from reasonlab.concept_sft.sft_config import SFTConfig
from reasonlab.concept_sft.sft_trainer import run_sft
from reasonlab.models import load_fresh, resolve_model
from reasonlab.models.scoring import text_perplexity
from tasks import concept_sft as stages
from tasks.run_info import flow_run_summary

TEXTS = ["Lily had a little cat. The little cat liked to sleep in the sun with Lily.",
         "Tom found a little bird in the garden. He gave the little bird some water."]
OTHER = ["The sun was hot. Tom sat in the sun all day.", "The sun was up. Sue went out to play in the sun."]
HELDOUT = ["Once upon a time, there was a little dog. He liked to run in the park.",
           "The girl had a big red ball. She threw it to her friend, who caught it."]


def case(stories_case, prompt="The little girl saw a"):
    return {"prompt": prompt, "answer": stories_case["answer"], "wrong_word": stories_case["wrong"].strip(),
            "paraphrases": ["The little boy saw a"], "neighbours": [{"prompt": "The sun was", "answer": "hot"}]}


def fresh_path(base, config, cases, folder) -> dict:
    """The way experiments ran before: load the base fresh, train, save, load the checkpoint, score it."""
    sft = run_sft(base, config, folder)
    model, tokenizer = load_fresh(resolve_model(sft["checkpoint"]), config.device, config.dtype)
    rows = evaluate.evaluate_cases(model, tokenizer, cases, ["completion"], k=5, system_prompt=config.system_prompt)
    return {"rows": rows, "perplexity": text_perplexity(model, tokenizer, HELDOUT), "losses": sft["losses"]}


def figures(result: dict) -> dict:
    return {k: result[k] for k in ("rows", "perplexity", "losses")}


def close(a, b, rel: float = 1e-4) -> bool:
    """Equal, floats within `rel` (one torch thread per worker sums in another order than two)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    return a == b


def test_restored_base_gives_what_a_fresh_load_gives_experiment_after_experiment(stories_path, stories_case,
                                                                                 tmp_path):
    base = resolve_model(str(stories_path))
    cases = [case(stories_case)]
    plain = SFTConfig(texts=TEXTS, epochs=2, learning_rate=1e-3, use_chat_template=False, device="cpu")
    lora = SFTConfig(**{**plain.model_dump(), "texts": OTHER, "learning_rate": 1e-2, "lora": {"r": 4, "alpha": 8}})
    # full, then LoRA (would start from the full fine-tune's weights if they leaked), then full again (would
    # train nothing if LoRA's frozen base weights stayed frozen), each in the same process as the one before
    for i, config in enumerate([plain, lora, plain.model_copy(update={"seed": 1})]):
        fast = experiment.run_experiment(base, config, cases, ["completion"], tmp_path / f"kept{i}", heldout=HELDOUT,
                                         k=5, keep_checkpoint=i == 1)
        assert figures(fast) == fresh_path(base, config, cases, tmp_path / f"fresh{i}"), f"experiment {i}"
        assert set(fast["timings"]) == {"load", "train", "setup", "score", "perplexity", "save", "total"}
        kept = i == 1
        assert (fast["checkpoint"] == str((tmp_path / f"kept{i}").resolve())) if kept else fast["checkpoint"] is None
        assert (tmp_path / f"kept{i}" / "model.safetensors").is_file() == kept  # no checkpoint written unless kept


@flow(name="fanout-test")
def experiments_flow(base, experiments: list[dict], config: SFTConfig, heldout: Path, workers: int) -> list[dict]:
    stages.run_experiments(base, experiments, config, heldout, FormatParams(evaluation=["completion"]), 5,
                           ExperimentParams(seeds=2, attribution_after=False, workers=workers))
    return experiments


def run_states(state) -> set[str]:
    names, _ = flow_run_summary(state.state_details.flow_run_id)
    return set(names.values())


def test_two_cases_fanned_out_give_the_sequential_results_and_rerun_cached(stories_path, stories_case, tmp_path):
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n\n".join(HELDOUT))
    plan = [{"name": f"case{i}-concept", "cases": [case(stories_case, prompt)], "text_set": "concept",
             "concept": "little things", "neuron": None, "texts": texts}
            for i, (prompt, texts) in enumerate([("The little girl saw a", TEXTS), ("The dog ran to the", OTHER)])]
    config = SFTConfig(texts=[], epochs=1, learning_rate=1e-3, use_chat_template=False, device="cpu",
                       output_dir=str(tmp_path / "sft"))

    def run(workers):
        state = experiments_flow(resolve_model(str(stories_path)), [dict(e) for e in plan], config, heldout,
                                 workers, return_state=True)
        return state, [[figures(r) for r in e["runs"]] for e in state.result()]

    fanned_state, fanned = run(2)
    assert run_states(fanned_state) == {"Completed"} and len(flow_run_summary(
        fanned_state.state_details.flow_run_id)[0]) == 4  # 2 cases x 2 seeds, each trained in a worker process
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):  # the same keys, computed again one by one
        sequential_state, sequential = run(1)
    assert run_states(sequential_state) == {"Completed"}
    assert close(fanned, sequential)
    assert not close(fanned[0][0], fanned[0][1]) and not close(fanned[0][0], fanned[1][0])  # four fine-tunes
    again_state, again = run(2)
    assert run_states(again_state) == {"Cached"} and again == sequential  # the records the refresh rewrote
