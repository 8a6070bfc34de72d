"""Bad input gets one clear error: prompt files, SFT configs, training texts, atomic writes."""

import json

import pytest

from reasonlab.errors import ReasonlabError
from reasonlab.io import atomic_path, write_json
from reasonlab.concept_sft.prompts import load_prompts
from reasonlab.concept_sft.sft_config import load_sft_config, parse_sft_config
from reasonlab.concept_sft.training_texts import check_texts

GOOD = {"prompt": "The neurotransmitter associated with reward is", "answer": "dopamine"}


@pytest.mark.parametrize("row, message", [
    ({"prompt": "What causes diabetes?", "answer": "insulin"}, "is a question"),
    ({"prompt": "Is dopamine involved in reward", "answer": "yes"}, "is a question"),
    ({"prompt": "Dopamine's role in reward is", "answer": "Yes"}, "yes/no"),
    ({"prompt": "The treatment for X includes", "answer": "rest and fluids daily"}, "has 4 words"),
    ({"prompt": "The drug of choice is", "answer": "The penicillin"}, "starts with an article"),
    ({"prompt": "The drug of choice is"}, "'answer' must be a non-empty string"),
    ({"prompt": "The drug of choice is", "answer": "x", "extra": 1}, "unknown field"),
    ("just a string", "expected an object"),
])
def test_malformed_prompt_row_names_row_and_rule(tmp_path, row, message):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([GOOD, row]))
    with pytest.raises(ReasonlabError, match=message) as err:
        load_prompts(path)
    assert "row 1" in str(err.value)


def test_prompt_file_yaml_and_topics(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("prompts:\n  - prompt: A common side effect of opioids is\n    answer: constipation\n    topic: opioid\n")
    [item] = load_prompts(path)
    assert item.topic == ["opioid"] and item.answer == "constipation"


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n{"prompt": "x",\n')
    with pytest.raises(ReasonlabError, match=r"invalid JSON at line \d"):
        load_prompts(path)


SEED_YAML = """
model_name: "meta-llama/Llama-3.1-8B-Instruct"
device: "cuda"
dtype: "bfloat16"
output_dir: "checkpoints/sft_my_experiment"
epochs: 5
learning_rate: 5e-6
batch_size: 1
gradient_accumulation_steps: 1
warmup_ratio: 0.1
max_length: 512
use_chat_template: true
system_prompt: ""
texts:
  - |
    Your training text 1...
"""


def test_seed_sft_config_parses(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(SEED_YAML)
    config = load_sft_config(path)
    assert config.learning_rate == 5e-6  # YAML reads 5e-6 as a string; the config takes it as a float
    assert config.epochs == 5 and config.lora is None


@pytest.mark.parametrize("change, message", [
    ({"epoch": 5}, "unknown field 'epoch'"),
    ({"epochs": "five"}, "field 'epochs'"),
    ({"learning_rate": -1}, "field 'learning_rate'"),
    ({"texts": "one text"}, "field 'texts'"),
    ({"lora": {"rank": 4}}, "unknown field 'lora.rank'"),
])
def test_bad_sft_config_one_clear_error(change, message):
    import yaml

    data = {**yaml.safe_load(SEED_YAML), **change}
    with pytest.raises(ReasonlabError, match=message):
        parse_sft_config(data)


def test_training_without_texts_is_refused_before_loading_the_model():
    from reasonlab.concept_sft.sft_trainer import run_sft
    from reasonlab.models import ResolvedModel

    config = parse_sft_config({"texts": []})  # valid for the flow (per-case texts come from the text-set file)
    with pytest.raises(ReasonlabError, match="the SFT config has no texts"):
        run_sft(ResolvedModel("none", "/nonexistent", None, "x"), config, "/nonexistent/out")


CASES = [{"prompt": "The primary hormone regulating blood pressure is", "wrong_token": " ren", "topic": ["blood pressure"]}]


@pytest.mark.parametrize("text, word", [
    ("Renin is an enzyme, not a hormone.", "Renin"),
    ("The kidney's renal tubules respond to it.", "renal"),
    ("It raises Blood  pressure in the evening.", "Blood  pressure"),
    ("Aldosterone keeps blood-pressure stable.", "blood-pressure"),
])
def test_leaking_text_names_text_and_word(text, word):
    texts = ["Aldosterone is a mineralocorticoid hormone.", text]
    with pytest.raises(ReasonlabError) as err:
        check_texts(texts, CASES)
    assert "training text 1" in str(err.value) and repr(word) in str(err.value)


def test_clean_texts_pass_and_extra_terms_apply():
    texts = ["Aldosterone is a steroid hormone of the adrenal cortex that controls sodium and potassium."]
    assert check_texts(texts, CASES) == texts
    with pytest.raises(ReasonlabError, match="forbidden_terms"):
        check_texts(texts, CASES, extra=["adrenal"])


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.json"
    write_json(dest, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(dest.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_path_replaces_a_directory(tmp_path):
    dest = tmp_path / "ckpt"
    for version in ("a", "b"):
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            (tmp / "w").write_text(version)
    assert (dest / "w").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


NEIGHBOUR = {"prompt": "The hormone that lowers blood glucose is", "answer": "insulin"}


@pytest.mark.parametrize("extra, message", [
    ({"paraphrases": ["Which neurotransmitter signals reward?"]}, r"row 1 paraphrase 0: .* is a question"),
    ({"paraphrases": ["The neurotransmitter  associated with reward is"]}, "row 1 paraphrase 0: .* repeats the prompt"),
    ({"paraphrases": "The reward neurotransmitter is"}, "'paraphrases' must be a list"),
    ({"neighbours": [{"prompt": "What lowers blood glucose?", "answer": "insulin"}]}, r"row 1 neighbour 0: .* question"),
    ({"neighbours": [{"prompt": "The hormone that lowers blood glucose is", "answer": "the insulin"}]},
     "row 1 neighbour 0: answer 'the insulin' starts with an article"),
    ({"neighbours": [{"prompt": "The reward chemical is", "answer": "dopamine", "why": 1}]}, "expected {prompt, answer}"),
    ({"paraphrases": ["The reward neurotransmitter is"],
      "neighbours": [{"prompt": "The reward neurotransmitter is", "answer": "dopamine"}]},
     "row 1 neighbour 0: .* is the prompt or one of its paraphrases"),
])
def test_paraphrases_and_neighbours_follow_the_prompt_rules(tmp_path, extra, message):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([NEIGHBOUR | {"prompt": "The insulin-lowering hormone is"}, GOOD | extra]))
    with pytest.raises(ReasonlabError, match=message):
        load_prompts(path)


def test_a_neighbour_that_is_itself_a_target_is_refused(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([GOOD | {"neighbours": [NEIGHBOUR]}, NEIGHBOUR]))
    with pytest.raises(ReasonlabError, match=r"row 0 neighbour 0: 'The hormone that lowers blood glucose is' is "
                                             r"itself a target prompt \(row 1\)"):
        load_prompts(path)
    path.write_text(json.dumps([GOOD | {"paraphrases": ["The reward neurotransmitter is"], "neighbours": [NEIGHBOUR]}]))
    [item] = load_prompts(path)
    assert item.paraphrases == ["The reward neurotransmitter is"] and item.neighbours == [NEIGHBOUR]


@pytest.mark.parametrize("seeds", [0, -1, "3", 1.5])
def test_fewer_than_one_seed_is_refused_by_name(seeds):
    from reasonlab.concept_sft.params import parse_group

    with pytest.raises(ReasonlabError, match=f"experiment.seeds: must be an integer >= 1 .*got {seeds!r}"):
        parse_group("experiment", {"seeds": seeds})
    assert parse_group("experiment", {"seeds": 1}).seeds == 1
    with pytest.raises(ReasonlabError, match="unknown text set 'shuffled'"):
        parse_group("experiment", {"text_sets": ["concept", "shuffled"]})


def test_shipped_prompts_and_text_sets_load_and_every_case_has_both_controls():
    from reasonlab.concept_sft.text_sets import load_text_sets
    from reasonlab.paths import project_root

    items = load_prompts(project_root() / "data" / "target_prompts.json")
    sets = load_text_sets(project_root() / "data" / "concept_texts.yaml")
    assert all(len(it.paraphrases) >= 3 and len(it.neighbours) >= 5 for it in items)
    for it in items:
        entry = sets[" ".join(it.prompt.lower().split())]
        assert set(entry.controls) == {"unrelated", "direct"}
        assert {len(entry.texts)} == {len(c.texts) for c in entry.controls.values()}  # the same budget in texts
        case = {"prompt": it.prompt, "wrong_token": " zz", "topic": it.topic}
        for texts in [entry.texts] + [c.texts for c in entry.controls.values()]:
            check_texts(texts, [case])  # no text names the case's topic


def test_the_greedy_wrong_word_is_forbidden_too_when_its_first_token_is_a_single_letter():
    case = {"prompt": "The British public broadcaster is the", "wrong_token": " B", "wrong_word": " Bloomberg",
            "topic": []}
    with pytest.raises(ReasonlabError, match="mentions 'Bloomberg', which matches 'bloomberg'"):
        check_texts(["News from Bloomberg today."], [case])
    assert check_texts(["The BBC is a broadcaster."], [case])  # ' B' alone is too short to forbid
