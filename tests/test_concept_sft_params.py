"""The main job's typed parameter groups: the UI's schema, one error per bad value, and the CLI generated from them."""

import argparse

import pytest
from prefect.utilities.callables import parameter_schema

from flows.cli_params import add_flow_arguments, flow_parameters
from flows.concept_sft import FLAGS, concept_sft, main
from flows.sweep_spec import load_sweep
from reasonlab import models, paths
from reasonlab.concept_sft.params import GROUPS, parse_group
from reasonlab.errors import ReasonlabError

# The flags of `python -m flows.concept_sft` before the grouping: each must still exist
OLD_FLAGS = ["--prompts", "--sft-config", "--model", "--use-chat-template", "--no-use-chat-template", "--top-k",
             "--max-rank", "--filter-format", "--eval-formats", "--concept", "--generate", "--llm-endpoint",
             "--local-llm", "--n", "--batches", "--attribution-cases", "--attribution-format", "--contrastive", "--tau",
             "--prune-mode", "--attribution-method", "--max-nodes", "--label-concepts", "--no-llm", "--interactive"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_flow_arguments(p, concept_sft, FLAGS)
    return p


def test_schema_has_the_groups_as_nested_documented_forms():
    schema = parameter_schema(concept_sft).model_dump_for_openapi()
    props, defs = schema["properties"], schema["definitions"]
    assert list(props) == ["prompts", "sft_config", "model", "use_chat_template", *GROUPS]
    for name, model in GROUPS.items():
        assert props[name]["$ref"] == f"#/definitions/{model.__name__}" and props[name]["description"]
        assert props[name]["default"] == model().model_dump()  # the form is prefilled with the defaults
        group = defs[model.__name__]
        assert group["additionalProperties"] is False and group["description"]
        assert set(group["properties"]) == set(model.model_fields)
        for field, spec in group["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
    attribution = defs["AttributionParams"]["properties"]
    assert attribution["prune_mode"]["enum"] == ["total", "max", "cumulative"]
    assert (attribution["tau"]["exclusiveMinimum"], attribution["tau"]["exclusiveMaximum"]) == (0, 1)
    assert defs["FormatParams"]["properties"]["evaluation"]["items"]["enum"] == ["completion", "chat"]
    assert defs["FilterParams"]["properties"]["top_k"]["minimum"] == 1


@pytest.mark.parametrize("groups, message", [
    ({"filter": {"top_k": 0}}, r"^concept-sft parameters: field 'filter.top_k': Input should be greater than or "
                               r"equal to 1 \(got 0\)$"),
    ({"attribution": {"tua": 0.1}}, r"^concept-sft parameters: unknown field 'attribution.tua'$"),
    ({"attribution": {"method": "saliency"}}, r"^concept-sft parameters: attribution.method: unknown attribution "
                                              r"method 'saliency': use one of \('act_x_grad', 'integrated_gradients'\)$"),
    ({"formats": {"evaluation": ["chat", "qa"]}}, r"formats.evaluation.1: unknown prompt format 'qa'"),
    ({"generation": {"n": "many"}}, r"field 'generation.n': Input should be a valid integer"),
    ({"concept": "aldosterone"}, r"concept-sft parameters: expected a mapping of fields, got str"),
])
def test_a_bad_value_in_a_group_is_one_error_naming_the_field_before_model_work(groups, message):
    forwards = models.forward_passes()
    with pytest.raises(ReasonlabError, match=message):
        concept_sft(**groups)
    assert models.forward_passes() == forwards


def test_groups_accept_partial_mappings_and_keep_the_other_defaults():
    attribution = parse_group("attribution", {"tau": 0.1, "contrastive": (" Ald", " Ren")})
    assert (attribution.tau, attribution.contrastive, attribution.max_nodes) == (0.1, [" Ald", " Ren"], 30)
    assert parse_group("filter", None).top_k == 10
    assert parse_group("formats", parse_group("formats", {"filter": "chat"})).filter == "chat"


def test_every_flag_has_help_and_shows_its_default():
    actions = [a for a in parser()._actions if a.option_strings and a.dest != "help"]
    options = {o for a in actions for o in a.option_strings}
    assert set(OLD_FLAGS) <= options, sorted(set(OLD_FLAGS) - options)
    fields = {f"{g}.{f}" for g, m in GROUPS.items() for f in m.model_fields}
    assert fields | {"prompts", "sft_config", "model", "use_chat_template"} <= {a.dest for a in actions}
    for a in actions:
        assert a.help and len(a.help) > 15, a.option_strings
        if not a.dest.endswith(":off"):
            assert "default" in a.help, (a.option_strings, a.help)
    text = parser().format_help()
    assert "(default: 0.05)" in text and "(default: chat completion)" in text and "(default: ' Answer:')" in text


def test_old_command_lines_give_the_same_parameters():
    argv = ["--model", "m", "--no-use-chat-template", "--top-k", "7", "--max-rank", "3", "--filter-format", "chat",
            "--eval-formats", "completion", "--concept", "hormones", "--generate", "--n", "6", "--batches", "2",
            "--local-llm", "qwen", "--attribution-cases", "2", "--contrastive", " Ald", " Ren", "--tau", "0.1",
            "--prune-mode", "total", "--attribution-method", "integrated_gradients", "--max-nodes", "9",
            "--label-concepts", "--interactive"]
    params = flow_parameters(parser().parse_args(argv))
    assert params == {
        "model": "m", "use_chat_template": False, "filter": {"top_k": 7, "max_rank": 3},
        "formats": {"filter": "chat", "evaluation": ["completion"]},
        "concept": {"name": "hormones", "label": True, "interactive": True},
        "generation": {"enabled": True, "n": 6, "batches": 2}, "llm": {"local_model": "qwen"},
        "attribution": {"cases": 2, "contrastive": [" Ald", " Ren"], "tau": 0.1, "prune_mode": "total",
                        "method": "integrated_gradients", "max_nodes": 9}}
    assert flow_parameters(parser().parse_args([])) == {}  # nothing given: the flow's defaults
    # --no-llm (the concept-SFT study's flag) wins over --label-concepts, in either order
    for argv in (["--label-concepts", "--no-llm"], ["--no-llm", "--label-concepts"]):
        assert flow_parameters(parser().parse_args(argv)) == {"concept": {"label": False}}
    with pytest.raises(SystemExit):
        parser().parse_args(["--prune-mode", "top"])


def test_cli_bad_value_is_one_line_naming_the_field():
    with pytest.raises(SystemExit, match=r"^error: concept-sft parameters: field 'filter.max_rank': Input should be "
                                         r"greater than or equal to 2 \(got 1\)$"):
        main(["--max-rank", "1"])


def test_repo_sweeps_give_children_valid_concept_sft_parameters():
    props = concept_sft.parameters.properties
    specs = [load_sweep(p) for p in sorted((paths.project_root() / "deployments" / "sweeps").glob("*.yaml"))]
    concept_specs = [s for s in specs if s.deployment.startswith("concept-sft/")]
    assert concept_specs, "no sweep file drives concept-sft"
    for spec in concept_specs:
        path = spec.name
        for child in spec.children():
            assert set(child["parameters"]) <= set(props), (path.name, child["parameters"])
            for name in GROUPS.keys() & child["parameters"].keys():
                parse_group(name, child["parameters"][name])


@pytest.mark.parametrize("case", ["malformed_row", "tau", "unknown_model"])
def test_cli_bad_input_prints_only_its_one_line_error(case, tmp_path, stories_path):
    """The whole console output of the CLI for bad input is one `error:` line: no Prefect run, no traceback."""
    import os
    import subprocess
    import sys

    bad = tmp_path / "prompts.json"
    bad.write_text('[{"prompt": "The hormone is", "answer": "aldosterone", "colour": "red"}]')
    args = {"malformed_row": ["--prompts", str(bad), "--model", str(stories_path)],
            "tau": ["--tau", "1.5", "--model", str(stories_path)],
            "unknown_model": ["--model", "no-such-model-anywhere"]}[case]
    expected = {"malformed_row": "unknown field(s) ['colour']", "tau": "attribution.tau",
                "unknown_model": "no-such-model-anywhere"}[case]
    out = subprocess.run([sys.executable, "-m", "flows.concept_sft", *args], capture_output=True, text=True,
                         timeout=300, cwd=paths.project_root(), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, lines[:40]
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
