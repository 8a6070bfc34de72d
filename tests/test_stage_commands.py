"""`reasonlab filter` and `reasonlab evaluate`: the filter and evaluation stages run alone, as real subprocesses."""

import json
import subprocess
import sys

import yaml

from reasonlab.concept_sft.sft_config import parse_sft_config
from reasonlab.concept_sft.sft_trainer import run_sft
from reasonlab.models import resolve_model


def reasonlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "reasonlab.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def error_lines(done) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error: ")]


def test_filter_then_evaluate_an_sft_checkpoint_against_its_base(stories_path, stories_case, tmp_path):
    answer = stories_case["answer"]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([
        {"prompt": "The little girl saw a", "answer": answer, "paraphrases": ["The small girl saw a"],
         "neighbours": [{"prompt": "The sun was", "answer": "hot"}]},
        {"prompt": "The dog ran to the", "answer": "moon"}]))
    filtered = tmp_path / "filtered.json"
    done = reasonlab("filter", "--input", str(prompts), "--output", str(filtered), "--model", str(stories_path))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(filtered.read_text())
    [case] = out["target_cases"]
    assert case["answer"] == answer and case["wrong_word"].startswith(stories_case["wrong"]) and case["p_wrong"] > case["p_correct"]
    assert [r["prompt"] for r in out["rejected"]] == ["The dog ran to the"] and out["model"]["source"]
    assert "1 of 2 prompts are target cases" in done.stdout

    ckpt = tmp_path / "ckpt"
    run_sft(resolve_model(str(stories_path)), parse_sft_config({
        "model_name": str(stories_path), "epochs": 2, "learning_rate": 1e-3, "use_chat_template": False,
        "texts": [f"Lily saw a {answer} cat. The {answer} cat sat with Lily."]}), ckpt)
    report = tmp_path / "eval.json"
    done = reasonlab("evaluate", "--model", str(ckpt), "--prompts", str(filtered), "--base", str(stories_path),
                     "--output", str(report))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert [r["kind"] for r in result["model"]["rows"]] == ["prompt", "paraphrase", "neighbour"]
    [fig] = result["figures"]
    assert fig["base_p_correct"] == case["p_correct"] or abs(fig["base_p_correct"] - case["p_correct"]) < 1e-4
    assert fig["p_correct"] != fig["base_p_correct"] and fig["neighbourhood_nll"] in (0.0, 1.0)
    assert result["model"]["perplexity"] != result["base"]["perplexity"]
    assert (tmp_path / "eval.md").read_text().startswith("| Case |") and "Efficacy" in done.stdout


def test_bad_stage_input_is_one_error_line(stories_path, tmp_path):
    bad_rows = tmp_path / "bad.yaml"
    bad_rows.write_text(yaml.safe_dump([{"prompt": "The dog ran to the", "answer": "park",
                                         "paraphrases": ["Where did the dog run?"]}]))
    done = reasonlab("filter", "--input", str(bad_rows), "--output", str(tmp_path / "f.json"), "--model",
                     str(stories_path))
    assert done.returncode == 1 and error_lines(done) == [done.stderr.strip().splitlines()[-1]]
    assert "row 0 paraphrase 0: prompt 'Where did the dog run?' is a question" in error_lines(done)[0]
    assert not (tmp_path / "f.json").exists()
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"prompt": "The dog ran to the", "answer": "park"}]))
    done = reasonlab("evaluate", "--model", str(stories_path), "--prompts", str(plain))
    assert done.returncode == 1 and "holds no target cases with a wrong answer" in error_lines(done)[0]
