"""Three-stage training on tiny real models: what each stage trains and freezes, the Bradley-Terry loss
going down, one clear error per bad input, and a flow rerun that retrains only the reward model."""

import asyncio
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from reasonlab.errors import ReasonlabError
from reasonlab.models import resolve_model
from reasonlab.three_stage import metrics, preferences
from reasonlab.three_stage.corpus import load_corpus, pack
from reasonlab.three_stage.params import DPOParams, PretrainParams, RewardParams, SFTParams
from reasonlab.three_stage.pretrain import run_pretrain
from reasonlab.three_stage.reward_model import run_reward_model
from reasonlab.three_stage.sft_pairs import run_sft_pairs
from report_tables import first_table_row
from tasks.run_info import flow_run_summary, read_flow_run

CORPUS = "data/three_stage/pharma_pretrain.jsonl"
LORA = {"lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"]}


def weights(folder):
    return load_file(folder / "model.safetensors")


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if k in after and not torch.equal(before[k], after[k])}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------- pure metrics

def test_metrics_ties_are_wrong_and_intervals_are_sane():
    assert metrics.preference_accuracy([1, 2, 3, 0], [0, 2, 4, -1]) == 0.5  # the tie (2, 2) is wrong
    assert metrics.mean_margin([1, 2], [0, 0]) == 1.5
    assert abs(metrics.bradley_terry_loss([0.0], [0.0]) - 0.6931) < 1e-3
    s = metrics.preference_summary([1.0] * 60 + [0.0] * 40, [0.5] * 100)
    assert (s["n"], s["accuracy"], s["ties"]) == (100, 0.6, 0)
    assert 0.50 < s["ci_low"] < 0.51 and 0.69 < s["ci_high"] < 0.70  # the textbook Wilson interval for 60/100
    assert s["margin"] == pytest.approx(0.1) and s["margin_ci_low"] < 0.1 < s["margin_ci_high"]


# ---------------------------------------------------------------- bad input, one clear error each

def test_preference_rows_missing_a_side_are_one_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"},
                                              {"prompt": "b", "chosen": "x"}, {"prompt": "c", "rejected": "y"}])
    with pytest.raises(ReasonlabError, match=r"2 of 3 preference rows lack 'chosen' or 'rejected'.*row 2 \(rejected\), "
                                             r"row 3 \(chosen\)"):
        preferences.load_preferences(path)


def test_identical_pairs_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "same", "rejected": "same "},
                                              {"prompt": "b", "chosen": "good", "rejected": "bad"}])
    pairs, report = preferences.load_preferences(path)
    assert len(pairs) == 1 and report["identical_skipped"] == 1 and report["identical_rows"] == [1]


def test_a_max_length_that_drops_most_pairs_is_refused_and_keep_end_keeps_the_reply(stories_path):
    from reasonlab.models import load_tokenizer

    tok = load_tokenizer(resolve_model(str(stories_path)))
    long_prompt = "\n\nHuman: " + "Once upon a time there was a little dog. " * 20 + "\n\nAssistant:"
    pairs = [preferences.Pair(long_prompt, " The end was happy.", " The end was sad.")] * 4
    with pytest.raises(ReasonlabError, match=r"max_length=32 would drop 4 of 4 pairs \(TRL drops over-long pairs "
                                             r"silently\)"):
        preferences.tokenize_pairs(tok, pairs, 32, use_chat_template=False, truncation="drop")
    rows, report = preferences.tokenize_pairs(tok, pairs, 32, use_chat_template=False)
    assert report["over_length"] == 4 and report["kept"] == 4
    assert all(len(r["chosen_ids"]) == 32 and r["chosen_ids"] != r["rejected_ids"] for r in rows)
    assert tok.decode(rows[0]["chosen_ids"]).rstrip().endswith(("happy.", "happy.</s>"))


def test_split_keeps_every_prompt_on_one_side_and_dedupe_drops_shared_training_prompts():
    pairs, _ = preferences.load_preferences("pharma")
    doubled = pairs + [preferences.Pair(p.prompt, p.chosen + " Check.", p.rejected) for p in pairs]
    train, held, _ = preferences.split_by_conversation(doubled, 0.3, seed=1)
    assert train and held and not {p.prompt for p in train} & {p.prompt for p in held}
    kept, report = preferences.dedupe_across(doubled, held)
    assert report["train_dropped_shared_conversation"] == len(doubled) - len(kept) > 0


def test_empty_corpus_is_one_error(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n   \n\n")
    with pytest.raises(ReasonlabError, match="corpus .* is empty: 0 training and 0 held-out documents"):
        load_corpus(str(tmp_path / "blank.txt"))


def test_hh_transcripts_become_chat_turns():
    msgs = preferences.to_messages("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:", " Fine.")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"] and msgs[-1]["content"] == "Fine."


# ---------------------------------------------------------------- what each stage trains and freezes

def test_pretrain_from_scratch_and_lora_continue(tiny_models, tmp_path):
    llama = tiny_models["llama"]
    corpus = load_corpus(CORPUS, heldout_fraction=0.2)
    assert corpus.train and corpus.heldout and not set(corpus.train) & set(corpus.heldout)
    scratch = run_pretrain(resolve_model(str(llama)), PretrainParams(
        init="scratch", corpus=CORPUS, block_size=16, max_train_blocks=8, max_eval_blocks=2, epochs=2,
        learning_rate=3e-3, batch_size=4), tmp_path / "scratch", device="cpu")
    assert scratch["perplexity_after"] < scratch["perplexity_before"]
    lora = run_pretrain(resolve_model(str(llama)), PretrainParams(
        corpus=CORPUS, block_size=16, max_train_blocks=8, max_eval_blocks=2, learning_rate=1e-2, batch_size=4,
        **LORA), tmp_path / "lora", device="cpu")
    moved = changed(weights(llama), weights(tmp_path / "lora"))
    assert moved and all("q_proj" in k or "v_proj" in k for k in moved)
    assert lora["trainable_params"] < lora["total_params"] / 10


def test_sft_pairs_full_and_lora(tiny_models, tmp_path):
    llama = tiny_models["llama"]
    settings = dict(sets=["pharma"], max_length=96, batch_size=2, epochs=2)
    full = run_sft_pairs(resolve_model(str(llama)), SFTParams(learning_rate=1e-3, **settings),
                         tmp_path / "full", device="cpu")
    assert full["data"]["pharma"] == {"train": 4, "heldout": 1}
    assert full["heldout_loss_after"] != full["heldout_loss_before"]
    moved = changed(weights(llama), weights(tmp_path / "full"))
    assert any("mlp" in k for k in moved) and any("embed" in k for k in moved)
    run_sft_pairs(resolve_model(str(llama)), SFTParams(learning_rate=1e-2, **LORA, **settings),
                  tmp_path / "lora", device="cpu")
    moved = changed(weights(llama), weights(tmp_path / "lora"))
    assert moved and all("q_proj" in k or "v_proj" in k for k in moved)


TINY = {  # every stage on the tiny Llama in seconds
    "pretrain": {"corpus": CORPUS, "heldout_fraction": 0.2, "block_size": 16, "max_train_blocks": 4,
                 "max_eval_blocks": 2, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0},
    "sft": {"sets": ["pharma"], "max_length": 96, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0},
    "reward": {"train": "pharma", "heldout_fraction": 0.25, "max_length": 64, "batch_size": 4, "learning_rate": 1e-3,
               "eval_every": 2, "freeze_below": 0}}


def _rm(tiny_models, tmp_path, name, **extra):
    settings = RewardParams(**{**dict(train="pharma", heldout_fraction=0.25, max_length=64, batch_size=4, epochs=1,
                                      eval_every=2, freeze_below=0), **extra})
    return run_reward_model(resolve_model(str(tiny_models["llama"])), settings, tmp_path / name, device="cpu")


def test_reward_model_lora_trains_adapters_and_head_only(tiny_models, tmp_path):
    out = _rm(tiny_models, tmp_path, "lora", learning_rate=1e-2, **LORA)
    before, after = weights(tiny_models["llama"]), weights(tmp_path / "lora")
    assert "score.weight" in after and "lm_head.weight" not in after
    moved = changed({f"model.{k[len('model.'):]}" if k.startswith("model.") else k: v for k, v in before.items()}, after)
    assert moved and all("q_proj" in k or "v_proj" in k for k in moved)
    config = json.loads((tmp_path / "lora" / "config.json").read_text())
    assert config["pad_token_id"] == out["pad_token_id"] is not None and len(config["id2label"]) == 1
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert out["evaluations"][0]["step"] == 0 and out["evaluations"][-1]["step"] == out["steps"]
    assert len(out["rewards"]["chosen"]) == out["heldout"]["n"] == out["data"]["heldout_pairs"]


def test_reward_model_full_with_frozen_lower_blocks(tiny_models, tmp_path):
    out = _rm(tiny_models, tmp_path, "full", learning_rate=1e-3, freeze_below=1)
    before, after = weights(tiny_models["llama"]), weights(tmp_path / "full")
    moved = changed(before, after)
    assert moved and all(k.startswith("model.layers.1.") or k == "model.norm.weight" for k in moved), moved
    assert out["trainable_params"] < out["total_params"]


def test_bradley_terry_loss_decreases_on_a_separable_toy_set(tiny_models, tmp_path):
    rows = [{"prompt": f"Story {i}:", "chosen": " The dog was happy and kind.", "rejected": " The dog was sad."}
            for i in range(16)]
    path = write_jsonl(tmp_path / "toy.jsonl", rows)
    held = write_jsonl(tmp_path / "held.jsonl", [dict(r, prompt=f"Tale {i}:") for i, r in enumerate(rows[:4])])
    out = run_reward_model(resolve_model(str(tiny_models["llama"])), RewardParams(
        train=path, heldout=held, max_length=48, batch_size=8, epochs=6, learning_rate=3e-3,
        center_rewards_coefficient=0.0, eval_every=100, warmup_ratio=0.0, freeze_below=0), tmp_path / "toy",
        device="cpu")
    losses = [r["loss"] for r in out["train_losses"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert out["heldout"]["accuracy"] == 1.0 and out["heldout"]["margin"] > 0


# ---------------------------------------------------------------- the flow: stages chained, only stage 3 reruns

def test_flow_rerun_with_new_reward_settings_retrains_only_stage_3(tiny_models, tmp_path):
    from flows.three_stage import three_stage

    config = tmp_path / "three_stage.yaml"  # a config file sets the groups' fields; the flow's arguments win
    config.write_text(yaml.safe_dump({
        "model": str(tiny_models["llama"]), "run": {"device": "cpu", "compare_order": True}, **TINY}))
    first = three_stage(config=str(config), return_state=True)
    out = first.result()
    states, artifacts = flow_run_summary(first.state_details.flow_run_id)
    assert sorted(states.values()) == ["Completed"] * 4, states
    assert {"three-stage-reward", "three-stage-report", "pretrain-progress", "sft-progress"} <= artifacts
    assert set(out["reward"]) == {"staged", "base"}
    for png in out["files"].values():
        assert open(png, "rb").read(4) == b"\x89PNG"
    # the report opens with the staged reward model's held-out accuracy [CI], margin and the paired order test
    _, published = asyncio.run(read_flow_run(first.state_details.flow_run_id))
    h, d = out["reward"]["staged"]["heldout"], out["order"]["accuracy_diff"]
    headline = first_table_row(published["three-stage-report"])
    assert headline == {"RM from": "staged",
                        "Accuracy [95 % CI]": f"{h['accuracy']:.3f} [{h['ci_low']:.3f}, {h['ci_high']:.3f}]",
                        "Margin": f"{h['margin']:+.3f}", "Pairs": str(h["n"]),
                        "Staged − base": f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]",
                        "McNemar p": f"{out['order']['mcnemar']['p_value']:.3g}"}
    assert "Does the order matter? **" in published["three-stage-report"]
    assert "rm_accuracy.png" in published["three-stage-report"].split("## Every stage")[0]

    second = three_stage(config=str(config), reward={"learning_rate": 2e-3}, return_state=True)
    second.result()
    states, _ = flow_run_summary(second.state_details.flow_run_id)
    by_task = {}
    for name, state in states.items():
        by_task.setdefault(name.rsplit("-", 1)[0], []).append(state)
    assert by_task == {"pretrain": ["Cached"], "sft-pairs": ["Cached"], "reward-model": ["Completed", "Completed"]}


def test_order_verdict_reads_the_mcnemar_test():
    from reasonlab.three_stage.report import order_verdict

    def order(diff, p):
        return {"paired": True, "n": 40, "accuracy_diff": {"diff": diff, "low": diff - 0.1, "high": diff + 0.1},
                "mcnemar": {"only_staged": 9, "only_base": 1, "p_value": p}}

    assert "**Yes**: the staged reward model" in order_verdict(order(0.2, 0.021))
    assert "**Yes**: the reward model from the base" in order_verdict(order(-0.2, 0.021))
    assert "**No detectable difference**" in order_verdict(order(0.05, 0.4)) and "n = 40" in order_verdict(order(0, 1))
    assert "Not tested" in order_verdict(None)


def test_flow_bad_input_fails_before_any_model_work(tiny_models, tmp_path):
    from flows.three_stage import three_stage
    from reasonlab import models

    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_models["llama"]), "reward": {"train": "pharma", "lr": 1}}))
    with pytest.raises(ReasonlabError, match="unknown field 'reward.lr'"):
        three_stage(config=str(config))
    forwards = models.forward_passes()
    with pytest.raises(ReasonlabError, match=r"three-stage parameters: field 'reward.batch_size': Input should be "
                                             r"greater than or equal to 1 \(got 0\)$"):
        three_stage(model=str(tiny_models["llama"]), reward={"train": "pharma", "batch_size": 0})
    with pytest.raises(ReasonlabError, match=r"unknown truncation 'middle'"):
        three_stage(model=str(tiny_models["llama"]), reward={"truncation": "middle"})
    assert models.forward_passes() == forwards
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "y"}])
    config.write_text(yaml.safe_dump({"model": str(tiny_models["llama"]), "sft": {"sets": ["pharma"]},
                                      "pretrain": {"corpus": CORPUS}, "reward": {"train": bad}}))
    with pytest.raises(ReasonlabError, match="1 of 1 preference rows lack"):
        three_stage(config=str(config))
    assert models.forward_passes() == forwards


def test_dpo_widens_the_heldout_logprob_margin(tiny_models, tmp_path):
    from reasonlab.three_stage.dpo import run_dpo

    rows = [{"prompt": f"Story {i}:", "chosen": "The dog was happy.", "rejected": "The dog was sad."} for i in range(8)]
    path = write_jsonl(tmp_path / "toy.jsonl", rows)
    held = write_jsonl(tmp_path / "held.jsonl", [dict(r, prompt=f"Tale {i}:") for i, r in enumerate(rows[:2])])
    out = run_dpo(resolve_model(str(tiny_models["llama"])),
                  DPOParams(enabled=True, max_length=48, batch_size=4, epochs=3, learning_rate=1e-3),
                  RewardParams(train=path, heldout=held), tmp_path / "dpo", device="cpu")
    assert out["logp_margin_after"] > out["logp_margin_before"]
    assert out["implicit_reward"]["accuracy"] == 1.0 and out["steps"] == 6


# ---------------------------------------------------------------- every figure right (old-code checks)

def _opening(prompt):
    import re

    return re.sub(r"\s+", " ", prompt.split("\n\nAssistant:", 1)[0]).strip().lower()


def test_heldout_split_keeps_each_hh_conversation_on_one_side():
    import re

    norm = lambda s: re.sub(r"\s+", " ", s).strip().lower()
    pairs, _ = preferences.load_preferences("hh-helpful")
    train, held, report = preferences.split_by_conversation(pairs, 0.2, seed=0)
    assert (report["continued_in_train"], report["opening_in_train"]) == (0, 0)
    continued = sum(any(norm(t.prompt).startswith(norm(h.prompt + h.chosen)) for t in train) for h in held)
    openings = {_opening(t.prompt) for t in train}
    shared_opening = sum(_opening(h.prompt) in openings for h in held)
    assert (continued, shared_opening) == (0, 0), f"{continued} and {shared_opening} of {len(held)} held-out pairs leak"


def test_every_rm_evaluation_is_the_same_estimator(tiny_models, tmp_path):
    # weights that do not move: every evaluation (before, between, after) must give the same figures
    out = _rm(tiny_models, tmp_path, "still", learning_rate=1e-12, eval_every=1, batch_size=3,
              center_rewards_coefficient=1.0)
    evals = out["evaluations"]
    assert len(evals) == out["steps"] + 1 >= 3
    for e in evals:
        assert e["accuracy"] == pytest.approx(evals[0]["accuracy"]), evals
        assert e["margin"] == pytest.approx(evals[0]["margin"], rel=1e-3, abs=1e-5), evals
        assert e["loss"] == pytest.approx(evals[0]["loss"], rel=1e-3), evals


def test_order_question_is_answered_on_the_same_pairs(tiny_models, tmp_path):
    from flows.three_stage import three_stage

    out = three_stage(model=str(tiny_models["llama"]), run={"device": "cpu"}, pretrain={"enabled": False},
                      sft=TINY["sft"], reward=TINY["reward"])
    staged, base = (out["reward"][k]["rewards"] for k in ("staged", "base"))
    right = lambda r: [c > x for c, x in zip(r["chosen"], r["rejected"])]
    a, b = right(staged), right(base)
    order = out["order"]
    assert order["paired"] and order["n"] == len(a) == out["reward"]["base"]["heldout"]["n"]
    assert order["mcnemar"]["only_staged"] == sum(x and not y for x, y in zip(a, b))
    assert order["mcnemar"]["only_base"] == sum(y and not x for x, y in zip(a, b))
    assert order["accuracy_diff"]["diff"] == pytest.approx((sum(a) - sum(b)) / len(a))
    assert order["accuracy_diff"]["low"] <= order["accuracy_diff"]["diff"] <= order["accuracy_diff"]["high"]


# ---------------------------------------------------------------- parameters: one set of defaults, a flag per field

def _parser():
    import argparse

    from flows.cli_params import add_flow_arguments
    from flows.three_stage import FLAGS, three_stage

    parser = argparse.ArgumentParser()
    add_flow_arguments(parser, three_stage, FLAGS)
    return parser


def test_every_flag_has_help_and_shows_its_default():
    from reasonlab.three_stage.params import GROUPS

    actions = [a for a in _parser()._actions if a.option_strings and a.dest not in ("help", "==SUPPRESS==")]
    fields = {f"{g}.{f}" for g, m in GROUPS.items() for f in m.model_fields}
    assert fields | {"model", "config"} == {a.dest for a in actions}
    for a in actions:
        assert a.help and len(a.help) > 15 and "default" in a.help, (a.option_strings, a.help)
    text = _parser().format_help()
    for shown in ("--reward-learning-rate LEARNING_RATE", "(default: 5e-05)", "--compare-order, --no-compare-order",
                  "--reward-truncation {keep_end,drop}", "--sft-sets SETS [SETS ...]", "--reward-lora-r LORA_R"):
        assert shown in text, shown


def test_flags_become_groups_and_the_config_file_sits_between_defaults_and_flags(tiny_models, tmp_path):
    from flows.cli_params import flow_parameters
    from flows.three_stage import check_inputs

    argv = ["--model", str(tiny_models["llama"]), "--device", "cpu", "--no-compare-order", "--reward-learning-rate",
            "1e-4", "--reward-lora-r", "16", "--reward-lora-target-modules", "q_proj", "k_proj", "--sft-sets", "pharma",
            "--pretrain-corpus", CORPUS, "--reward-train", "pharma"]
    params = flow_parameters(_parser().parse_args(argv))
    assert params == {"model": str(tiny_models["llama"]), "run": {"device": "cpu", "compare_order": False},
                      "reward": {"learning_rate": 1e-4, "lora_r": 16, "lora_target_modules": ["q_proj", "k_proj"],
                                 "train": "pharma"},
                      "sft": {"sets": ["pharma"]}, "pretrain": {"corpus": CORPUS}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"reward": {"learning_rate": 3e-4, "epochs": 2}, "sft": {"epochs": 3}}))
    groups = check_inputs(**params, config=str(config)).groups
    reward = groups["reward"]
    assert (reward.learning_rate, reward.epochs, reward.batch_size) == (1e-4, 2, RewardParams().batch_size)
    assert reward.lora.r == 16 and reward.lora.alpha == 16 and groups["sft"].epochs == 3
    assert groups["run"].compare_order is False and groups["pretrain"].lora is None
    config.write_text(yaml.safe_dump({"rewards": {"epochs": 2}}))
    with pytest.raises(ReasonlabError, match=r"unknown section\(s\) \['rewards'\]"):
        check_inputs(**params, config=str(config))


def test_sweep_children_give_every_figure_and_the_accuracy_plot(tiny_models, tmp_path):
    import asyncio

    from flows.sweep_spec import (comparison_markdown, comparison_rows, load_sweep, metrics_from_artifacts,
                                  plot_comparison)
    from flows.three_stage import three_stage
    from reasonlab.three_stage.sweep_metrics import COLUMNS
    from tasks.run_info import read_flow_run

    spec = load_sweep("deployments/sweeps/three_stage_reward.yaml")
    assert spec.deployment == "three-stage/three-stage" and spec.model_parameter == "model"
    children = []
    for name, lr in (("lr1e-3", 1e-3), ("lr3e-3", 3e-3)):  # two children: stages 1-2 shared, stage 3 each
        state = three_stage(model=str(tiny_models["llama"]), run={"device": "cpu"},
                            **{**TINY, "reward": {**TINY["reward"], "learning_rate": lr}}, return_state=True)
        state.result()
        states, artifacts = asyncio.run(read_flow_run(state.state_details.flow_run_id))
        children.append({"label": f"llama | {name}", "model": "llama", "set": name, "state": "Completed",
                         "task_states": states, "metrics": metrics_from_artifacts(artifacts, spec.deployment)})
    rows = comparison_rows(children)
    for row in rows:
        blank = [c for c in COLUMNS if row[c] is None or row[c] != row[c]]
        assert not blank, (row["child"], blank)
        assert row["rm_accuracy_low"] <= row["rm_accuracy"] <= row["rm_accuracy_high"] + 1e-12
        assert row["order_diff_low"] <= row["order_diff"] <= row["order_diff_high"] and 0 <= row["order_p"] <= 1
    assert rows[1]["tasks_cached"] == 2 and rows[0]["ppl_after"] == rows[1]["ppl_after"]  # stages 1-2 Cached
    assert rows[0]["ppl_after"] != rows[0]["ppl_before"] and rows[0]["sft_loss_after"] != rows[0]["sft_loss_before"]
    text = comparison_markdown(spec.name, spec.deployment, rows, None)
    assert "rm_accuracy_low" in text and "llama \\| lr3e-3" in text
    png = plot_comparison(spec.name, spec.deployment, rows, tmp_path / "sweep.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
