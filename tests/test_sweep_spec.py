"""Sweep definitions, the comparison (table + PNG), the model-reference resolver, and setup's parsing."""

from __future__ import annotations

import pytest

from blocks import ModelSpecBlock, StorageLocation
from blocks.resolve import resolve_model_ref
from deployments.setup import SetupConfig, parse_models, pool_envs, process_job_template
from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.models import resolve_model
from flows.sweep_spec import comparison_markdown, comparison_rows, load_sweep, parse_sweep, plot_comparison
from reasonlab.concept_sft.sweep_metrics import child_metrics

CONCEPT = "concept-sft/concept-sft"


def test_repo_sweep_definitions_are_valid():
    sweeps = sorted((paths.project_root() / "deployments" / "sweeps").glob("*.yaml"))
    assert sweeps, "no sweep definitions in deployments/sweeps"
    import yaml

    deployed = {d["name"] for d in yaml.safe_load((paths.project_root() / "prefect.yaml").read_text())["deployments"]}
    for path in sweeps:
        spec = load_sweep(path)
        assert spec.children() and spec.deployment.split("/")[1] in deployed, f"{path}: {spec.deployment}"


def test_children_are_models_times_parameter_sets():
    spec = parse_sweep({"models": ["a", "/x/y/tiny"], "base_parameters": {"top_k": 10, "prompts": "p.json"},
                        "parameter_sets": [{"name": "k10"}, {"name": "k5", "top_k": 5}]})
    kids = spec.children()
    assert [k["label"] for k in kids] == ["a | k10", "a | k5", "tiny | k10", "tiny | k5"]
    assert kids[1]["parameters"] == {"top_k": 5, "prompts": "p.json", "model": "a"}
    assert kids[2]["parameters"]["model"] == "/x/y/tiny"


def test_a_parameter_set_overrides_a_group_field_by_field():
    spec = parse_sweep({"models": ["a"], "base_parameters": {"formats": {"evaluation": ["completion"]},
                                                             "filter": {"top_k": 10, "max_rank": 5}},
                        "parameter_sets": [{"name": "k5", "filter": {"top_k": 5}, "formats": "x"}]})
    [kid] = spec.children()
    assert kid["parameters"] == {"formats": "x", "filter": {"top_k": 5, "max_rank": 5}, "model": "a"}
    assert spec.base_parameters["filter"] == {"top_k": 10, "max_rank": 5}  # the base is not changed


@pytest.mark.parametrize("data, message", [
    ({"models": []}, "models must be a non-empty list"),
    ({"models": ["a", "a"]}, "duplicates"),
    ({"models": ["a"], "deployment": "concept-sft"}, "deployment must be 'flow name/deployment name'"),
    ({"models": ["a"], "parameter_sets": [{"top_k": 5}]}, r"parameter_sets\[0\] needs a name"),
    ({"models": ["a"], "parameter_sets": [{"name": "x", "model": "b"}]}, "models come from `models`"),
    ({"models": ["a"], "modles": ["b"]}, r"unknown field\(s\) \['modles'\]"),
])
def test_bad_sweeps_name_the_field(data, message):
    with pytest.raises(ReasonlabError, match=message):
        parse_sweep(data)


def test_comparison_table_and_plot(tmp_path):
    filt = [{"kept": "yes"}, {"kept": "no: answer is top-1"}]
    res = [{"base_p_correct": 0.1, "p_correct": 0.5, "correct_gain": 0.4, "efficacy_nll": 1.0, "paraphrase_nll": 0.5,
            "neighbourhood_nll": 0.8, "ppl_change": 0.01},
           {"base_p_correct": 0.1, "p_correct": 0.3, "correct_gain": 0.2, "efficacy_nll": 0.0, "paraphrase_nll": None,
            "neighbourhood_nll": 1.0, "ppl_change": 0.03}]
    children = [
        {"label": "m1 | d", "model": "m1", "set": "d", "state": "Completed", "flow_run_name": "r1", "duration_s": 3.0,
         "task_states": {"a-0": "Cached", "b-0": "Completed"}, "metrics": child_metrics({"concept-sft-filter": filt, "concept-sft-results": res})},
        {"label": "m2 | d", "model": "m2", "set": "d", "state": "Completed", "flow_run_name": "r2", "duration_s": 1.0,
         "task_states": {"a-0": "Cached"}, "metrics": child_metrics({"concept-sft-filter": [{"kept": "no: x"}]})},
    ]
    rows = comparison_rows(children)
    assert rows[0]["target_cases"] == 1 and rows[0]["correct_gain"] == pytest.approx(0.3)
    assert (rows[0]["efficacy"], rows[0]["paraphrase"], rows[0]["neighbourhood"]) == (0.5, 0.5, pytest.approx(0.9))
    assert (rows[0]["tasks"], rows[0]["tasks_cached"]) == (2, 1)
    assert rows[1]["target_cases"] == 0 and rows[1]["sft_p_correct"] is None
    png = plot_comparison("demo", CONCEPT, rows, tmp_path / "out" / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and not list((tmp_path / "out").glob(".*"))
    md = comparison_markdown("demo", CONCEPT, rows, f"![plot]({png})")
    assert ("| m1 \\| d | Completed | 3.0000 | 1 | 2 | 1 | 0.1000 | 0.4000 | 0.3000 | 0.5000 | 0.5000 | 0.9000 "
            "| 0.0200 |") in md
    assert "| m2 \\| d | Completed | 1.0000 | 1 | 1 | 0 | — | — | — | — | — | — | — |" in md
    assert "Pareto front: m1 | d; best trade-off (efficacy - damage): m1 | d" in md


def test_tradeoff_front_and_best():
    from reasonlab.concept_sft.sweep_metrics import tradeoff

    rows = [{"child": "a", "efficacy": 1.0, "neighbourhood": 0.4, "correct_gain": .3},   # on the front
            {"child": "b", "efficacy": 0.67, "neighbourhood": 1.0, "correct_gain": .1},  # best: 0.67 - 0 > 1 - 0.6
            {"child": "c", "efficacy": 0.33, "neighbourhood": 0.8, "correct_gain": .2},  # dominated by b
            {"child": "d", "efficacy": None, "neighbourhood": None}]
    assert tradeoff(rows) == (["a", "b"], "b")
    assert tradeoff(rows[3:]) == ([], None)


def test_model_refs_resolve_names_folders_and_blocks(stories_path):
    assert resolve_model_ref(str(stories_path)) == resolve_model(str(stories_path))
    ModelSpecBlock(model=str(stories_path)).save("stories-test", overwrite=True)
    assert resolve_model_ref("block:stories-test") == resolve_model(str(stories_path))
    assert resolve_model_ref("reasonlab-model/stories-test") == resolve_model(str(stories_path))
    with pytest.raises(ReasonlabError, match="no reasonlab-model block named 'nope'"):
        resolve_model_ref("block:nope")
    with pytest.raises(ReasonlabError, match="names no block"):
        resolve_model_ref("block:")


def test_setup_pieces():
    assert parse_models(["a=smollm2-135m-instruct", "b = /x/y"]) == {"a": "smollm2-135m-instruct", "b": "/x/y"}
    with pytest.raises(ReasonlabError, match="use NAME=MODEL"):
        parse_models(["just-a-name"])
    storage = StorageLocation(home="/shared/rl", result_storage="local-file-system/r")
    envs = pool_envs(SetupConfig(home="/shared/rl", gpu_devices="1"), storage.env())
    assert envs["gpu"] == {"REASONLAB_HOME": "/shared/rl", "REASONLAB_RESULT_STORAGE": "local-file-system/r",
                           "CUDA_VISIBLE_DEVICES": "1"}
    assert "CUDA_VISIBLE_DEVICES" not in envs["cpu"]
    template = process_job_template(envs["gpu"])
    assert template["variables"]["properties"]["env"]["default"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert template["job_configuration"]["env"] == "{{ env }}"


def test_an_unknown_flow_has_no_sweep_figures():
    from flows.sweep_spec import sweep_metrics

    with pytest.raises(ReasonlabError, match="no sweep figures for flow 'nope'"):
        sweep_metrics("nope/nope")
