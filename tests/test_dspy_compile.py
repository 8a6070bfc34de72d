"""DSPy compile: metrics and parsing (DummyLM), data, bad input, and real DSPy runs against the in-process
engine on stories260K / tiny models and against a real loopback OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from conftest import DATA
from flows.dspy_compile import dspy_compile
from loopback_llm import ScriptedLLM
from reasonlab.dspy_compile import data, evaluate, lm as lms, metrics, programs, run
from reasonlab.errors import ReasonlabError
from tasks.dspy_compile import resolve_lm
from report_tables import first_table_row
from tasks.run_info import flow_run_summary, read_flow_run

ROOT = Path(__file__).resolve().parents[1]
# One reply carrying every field DSPy's ChatAdapter may ask for (extra sections are ignored by the parser)
FORMATTED = ("[[ ## reasoning ## ]]\nThere are 3 + 15 = 18.\n\n[[ ## proposed_instruction ## ]]\nSolve the problem "
             "step by step and give the final number.\n\n[[ ## answer ## ]]\n18\n\n[[ ## completed ## ]]")


# --- metrics and parsing (pure functions, DummyLM) ------------------------------------------------------


# lm-evaluation-harness's gsm8k task: "strict-match" = regex `#### (\-?[0-9\.\,]+)`, the first match;
# "flexible-extract" = regex `(-?[$0-9.,]{2,})|(-?[0-9]+)`, the last match; both then compared as strings after
# removing ",", "$", "(?s).*#### " and a final "." (and lower-casing). None: the rule extracts nothing.
LM_EVAL_READINGS = [  # (model text, strict-match, flexible-extract)
    ("10-12", None, "-12"),
    ("1,2,3", None, "123"),
    ("2,5", None, "25"),
    ("18 (3 x 6)", None, "6"),
    ("#### 18\n\n 3", "18", "3"),
    ("The answer is $1,234.", None, "1234"),
    ("#### -3.5", "-3.5", "-3.5"),
    ("eighteen", None, None),
]


@pytest.mark.parametrize("text,strict,flexible", LM_EVAL_READINGS)
def test_gsm8k_extraction_follows_lm_eval(text, strict, flexible):
    assert metrics.strict_match(text) == strict
    assert metrics.flexible_extract(text) == flexible


def test_gsm8k_score_reads_the_answer_field_as_the_answer_line():
    """DSPy's answer field plays the part of GSM8K's "#### " line: strict-match reads its first number, flexible
    the last number anywhere; the headline score is flexible-extract."""
    # the old parser's readings (the last number) that strict-match does not give; lm-eval's both rules read
    # "1,2,3" as 123 and "2,5" as 25 (commas are dropped), so those stay
    strict_reads = {"10-12": ("10", "-12"), "18 (3 x 6)": ("18", "6"), "#### 18\n\n 3": ("18", "3"),
                    "1,2,3": ("123", "123"), "2,5": ("25", "25")}
    for text, (strict, last) in strict_reads.items():
        assert metrics.score("gsm8k", strict, text)["strict"] == 1.0, text
        assert metrics.score("gsm8k", last, text)["flexible"] == 1.0, text
    s = metrics.score("gsm8k", "18", "#### 18\n\n 3")
    assert (s["strict"], s["flexible"], s["score"]) == (1.0, 0.0, 0.0)
    s = metrics.score("gsm8k", "18", "18 (3 x 6)")
    assert (s["strict"], s["flexible"], s["strict_extracted"], s["flexible_extracted"]) == (1.0, 0.0, 1.0, 1.0)
    s = metrics.score("gsm8k", "1,234", "The answer is $1234.")
    assert (s["strict"], s["flexible"], s["strict_extracted"]) == (0.0, 1.0, 0.0)
    s = metrics.score("gsm8k", "18", "eighteen")
    assert (s["score"], s["strict_extracted"], s["flexible_extracted"]) == (0.0, 0.0, 0.0)
    assert metrics.score("gsm8k", "18", None)["flexible_extracted"] == 0.0
    assert metrics.score("gsm8k", "18", "18.0")["score"] == 0.0  # lm-eval compares strings, not numbers


def test_hotpot_metrics_and_paired_bootstrap():
    assert metrics.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert metrics.hotpot_em("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert metrics.hotpot_f1("yes", "no") == 0.0
    assert metrics.hotpot_f1("Dambovita River", "the river Dambovita flows") == pytest.approx(0.8)  # P 2/3, R 1


def test_report_difference_is_this_row_minus_the_baseline():
    from reasonlab.dspy_compile import report

    def result(approach, scores):
        rows = [{"id": i, "score": float(x)} for i, x in enumerate(scores)]
        summary = {"n": len(rows), "score": sum(scores) / len(scores), "ci_low": 0.1, "ci_high": 0.9,
                   "parse_failures": 0, "errors": 0, "prompt_tokens_per_ex": 1.0, "completion_tokens_per_ex": 1.0,
                   "compute_s_per_ex": 1.0, "cost_usd_per_ex": 0.0, "latency_s_per_ex": 1.0}
        return {"model": "m", "approach": approach, "rows": rows, "summary": summary}

    better, worse = [1, 1, 1, 0, 1, 1, 1, 1] * 4, [0, 0, 1, 0, 0, 1, 0, 0] * 4
    rows = report.table([result("cot", worse), result("manual", better)], "gsm8k", baseline="cot")
    assert rows[0]["vs cot"] == "" and rows[1]["vs cot"].startswith("+0.625 [+")
    text = report.markdown(rows)
    assert text.splitlines()[1] == "|" + "---|" * len(rows[0]) and "| m | manual | 0.875 | 0.1 | 0.9 |" in text
    # the report's first line: the best approach, its accuracy [CI], its difference against cot, cost, n
    first = first_table_row(report.headline_markdown(rows, "gsm8k", baseline="cot"))
    assert first == {"Approach": "manual", "Accuracy [95 % CI]": "0.875 [0.100, 0.900]",
                     "vs cot [95 % CI]": rows[1]["vs cot"], "Cost / ex": "1.00 s", "n": "32"}


def test_parse_failures_and_errors_are_rows_not_crashes():
    from dspy.utils import DummyLM

    rows = [{"id": "a", "question": "3 + 15?", "answer": "18"}, {"id": "b", "question": "2 + 2?", "answer": "4"},
            {"id": "c", "answer": "1"}]  # c has no question: an error row
    lm = DummyLM([{"reasoning": "3 + 15 = 18", "answer": "18"}, {"reasoning": "no answer field here"}])
    out = evaluate.evaluate_program(programs.MathSolver(), rows, "gsm8k", lm)
    assert [r["status"] for r in out] == ["ok", "parse_error", "error"]
    assert out[0]["score"] == 1.0 and out[1]["score"] == 0.0 and "AdapterParseError" in out[1]["reason"]
    assert "KeyError" in out[2]["reason"]
    summary = evaluate.summarize(out, "gsm8k", lambda p, c, s: 0.0)
    assert summary["parse_failures"] == 1 and summary["errors"] == 1 and summary["score"] == pytest.approx(1 / 3)
    assert summary["strict_score"] == pytest.approx(1 / 3) and summary["strict_extracted"] == pytest.approx(1 / 3)
    assert summary["flexible_extracted"] == pytest.approx(1 / 3)


# --- data ---------------------------------------------------------------------------------------------------


def test_subsets_are_deterministic_disjoint_and_fields_are_checked(tmp_path):
    a = data.load_splits("gsm8k", 5, 3, 4, seed=1)
    b = data.load_splits("gsm8k", 5, 3, 4, seed=1)
    assert a["hashes"] == b["hashes"] and a["source"].endswith("gsm8k")
    ids = [r["id"] for s in ("train", "dev") for r in a[s]]
    assert len(set(ids)) == 8 and all(i.startswith("train-") for i in ids)
    assert all(r["id"].startswith("test-") and r["answer"].lstrip("-").replace(".", "").isdigit() for r in a["test"])
    assert data.load_splits("gsm8k", 5, 3, 4, seed=2)["hashes"] != a["hashes"]
    h = data.load_splits("hotpotqa", 2, 1, 2, seed=0)
    assert len(h["test"][0]["paragraphs"]) >= 2 and " | " in h["test"][0]["paragraphs"][0]
    assert h["skipped_without_context"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(ReasonlabError, match=r"row 1 is missing the field 'answer'"):
        data.load_splits("gsm8k", 1, 0, 0, source=str(bad))


@contextlib.contextmanager
def refusing_server():
    """A real HTTP server that answers 401 to every request (a wrong API key)."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _refuse(self):
            body = b'{"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}'
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


# --- bad input: one clear error each, before any model work -------------------------------------------------


def test_bad_input_fails_before_model_work(tmp_path, stories_chat, monkeypatch):
    before = lms.generations()
    common = dict(models=[str(stories_chat)], data={"train_size": 2, "dev_size": 1, "test_size": 2},
                  sampling={"max_tokens": 8})
    with pytest.raises(ReasonlabError, match=r"compile\.approaches.*unknown optimizer/approach 'miprov9'"):
        dspy_compile(compile={"approaches": ["cot", "miprov9"]}, **common)
    with pytest.raises(ReasonlabError, match="trainset too small for bootstrap: 1 examples, it needs at least 2"):
        dspy_compile(compile={"approaches": ["bootstrap"]}, **{**common, "data": {"train_size": 1}})
    bad = tmp_path / "gsm.jsonl"
    bad.write_text(json.dumps({"question": "only a question"}) + "\n")
    with pytest.raises(ReasonlabError, match="row 0 is missing the field 'answer'"):
        dspy_compile(compile={"approaches": ["cot"]}, **{**common, "data": {"source": str(bad)}})
    monkeypatch.setenv("REASONLAB_LLM_MODEL", "gpt-x")
    monkeypatch.setenv("REASONLAB_LLM_API_KEY_ENV", "TEST_DSPY_KEY")
    monkeypatch.setenv("TEST_DSPY_KEY", "sk-wrong")
    with refusing_server() as base_url:
        monkeypatch.setenv("REASONLAB_LLM_BASE_URL", base_url)
        with pytest.raises(ReasonlabError, match=r"refused the API key \(HTTP 401\).*TEST_DSPY_KEY"):
            dspy_compile(compile={"approaches": ["cot"]}, **{**common, "models": ["env"]})
    from ports import refused_url

    with refused_url() as url:  # bound and never listening: refused, and no other process can take the port
        monkeypatch.setenv("REASONLAB_LLM_BASE_URL", url)
        with pytest.raises(ReasonlabError, match="is unreachable .*is the server up"):
            dspy_compile(compile={"approaches": ["cot"]}, **{**common, "models": ["env"]})
    assert lms.generations() == before


@pytest.mark.parametrize("params,message", [
    ({"sampling": {"max_tokens": 0}}, r"sampling\.max_tokens'?: Input should be greater than or equal to 1"),
    ({"sampling": {"temperature": -1}}, r"sampling\.temperature'?"),
    ({"data": {"test_size": 0}}, r"data\.test_size'?"),
    ({"sampling": {"adapter": "xml"}}, r"sampling\.adapter'?.*unknown adapter 'xml'"),
    ({"compile": {"options": '{"random_search": 4'}}, r"compile\.options'?.*not valid JSON"),
    ({"compile": {"options": {"miprov9": {}}}}, r"compile\.options'?.*unknown approach 'miprov9'"),
    ({"reference": {"approach": "best"}}, r"reference\.approach'?"),
    ({"program": {"k": 0}}, r"program\.k'?"),
    ({"sampling": {"max_token": 8}}, r"sampling\.max_token'?"),
])
def test_a_bad_group_field_is_one_error_naming_it_before_model_work(params, message, stories_chat):
    before = lms.generations()
    with pytest.raises(ReasonlabError, match=r"^dspy-compile parameters: (unknown )?(field ')?" + message) as e:
        dspy_compile(models=[str(stories_chat)], **params)
    assert len(str(e.value).splitlines()) == 1
    assert lms.generations() == before


def test_cli_bad_value_is_one_line_and_help_documents_every_flag(capsys):
    from flows.dspy_compile import main, parser

    with pytest.raises(SystemExit, match=r"^error: dspy-compile parameters: field 'sampling\.max_tokens': "):
        main(["--max-tokens", "0"])
    text = parser().format_help()
    flags = [a for a in parser()._actions if a.option_strings and a.dest != "help"]
    assert len(flags) == 25, [a.option_strings for a in flags]  # 24 parameters and --verbose
    for action in flags:
        assert action.help and "default" in action.help, action.option_strings
    for flag in ("--task", "--models", "--approaches", "--reference", "--reference-approach", "--teacher",
                 "--train-size", "--dev-size", "--test-size", "--seed", "--data", "--demos", "--adapter",
                 "--temperature", "--max-tokens", "--num-threads", "--retriever", "--k", "--hops",
                 "--optimizer-options", "--usd-per-hour", "--baseline", "--device", "--model"):
        assert flag in text, flag
    from flows.cli_params import flow_parameters

    args = parser().parse_args(["--train-size", "3", "--optimizer-options", '{"bootstrap": {"max_rounds": 2}}',
                                "--reference", "x", "--model", "m"])
    assert flow_parameters(args) == {"data": {"train_size": 3}, "compile": {"options": '{"bootstrap": '
                                                                                        '{"max_rounds": 2}}'},
                                     "reference": {"model": "x"}, "model": "m"}


def test_library_never_reaches_prefect_or_blocks():
    for path in (ROOT / "reasonlab" / "dspy_compile").glob("*.py"):
        text = path.read_text()
        for name in ("prefect", "blocks", "tasks.", "flows."):
            assert f"import {name}" not in text and f"from {name}" not in text, (path.name, name)



# --- real DSPy runs ------------------------------------------------------------------------------------------


def test_flow_on_stories_then_rerun_is_all_cached(stories_chat, tiny_models):
    kwargs = dict(task="gsm8k", models=[str(stories_chat)],
                  compile={"approaches": ["predict", "cot", "manual", "bootstrap", "random_search"],
                           "options": {"random_search": {"num_candidate_programs": 1}}},
                  reference={"model": str(tiny_models["llama"])}, data={"train_size": 2, "dev_size": 1,
                                                                        "test_size": 3},
                  sampling={"max_tokens": 12})
    first = dspy_compile(**kwargs, return_state=True)
    out = first.result()
    states, artifacts = flow_run_summary(first.state_details.flow_run_id)
    assert set(states.values()) == {"Completed"}, states
    assert {"dspy-compile-table", "dspy-compile-reference", "dspy-compile-errors", "dspy-compile-report"} <= artifacts
    assert [r["approach"] for r in out["table"]] == ["predict", "cot", "manual", "bootstrap", "random_search",
                                                     "cot (reference)"]
    assert all(r["n"] == 3 and r["tokens_in/ex"] > 0 and r["compute_s/ex"] > 0 for r in out["table"])
    manual = next(r for r in out["table"] if r["approach"] == "manual")
    assert manual["demos"] == 3 and manual["tokens_in/ex"] > out["table"][1]["tokens_in/ex"]
    assert len(out["reference"]) == 5 and out["reference"][0]["cost unit"] == "compute_s"
    _, published = asyncio.run(read_flow_run(first.state_details.flow_run_id))
    best = max((r for r in out["table"] if "reference" not in r["approach"]), key=lambda r: r["accuracy"])
    headline = first_table_row(published["dspy-compile-report"])
    assert headline["Approach"] == best["approach"]
    assert headline["Accuracy [95 % CI]"] == f"{best['accuracy']:.3f} [{best['ci95_low']:.3f}, {best['ci95_high']:.3f}]"
    assert headline["Cost / ex"] == f"{best['compute_s/ex']:.2f} s" and headline["n"] == "3"
    assert "accuracy_vs_cost.png" in published["dspy-compile-report"]
    assert Path(out["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(Path(out["programs"]["stories260K/manual"]).read_text())
    assert len(saved["solve.predict"]["demos"]) == 3

    calls = lms.generations()
    second = dspy_compile(**kwargs, return_state=True)
    states, _ = flow_run_summary(second.state_details.flow_run_id)
    assert set(states.values()) == {"Cached"}, states
    assert lms.generations() == calls
    assert second.result()["table"] == out["table"]


def test_endpoint_lm_usage_cost_and_a_failing_example(monkeypatch):
    """Real DSPy through dspy.LM("openai/...", api_base=...) against a real HTTP server: the server's usage,
    dollars from the endpoint's prices, and an example whose call is refused recorded with its reason."""
    monkeypatch.setenv("REASONLAB_LLM_MODEL", "big-model")
    monkeypatch.setenv("REASONLAB_LLM_PRICE_INPUT_PER_1K", "0.5")
    monkeypatch.setenv("REASONLAB_LLM_PRICE_OUTPUT_PER_1K", "1.5")
    with ScriptedLLM([("ok", FORMATTED), ("ok", FORMATTED), ("status", 400), ("ok", FORMATTED)]) as srv:
        monkeypatch.setenv("REASONLAB_LLM_BASE_URL", srv.base_url)
        out = dspy_compile(task="gsm8k", models=["env"], compile={"approaches": ["cot"]},
                           data={"train_size": 0, "dev_size": 0, "test_size": 3, "seed": 7},
                           sampling={"max_tokens": 64})
        bodies = [r["body"] for r in srv.requests]
    [row] = out["table"]
    assert row["n"] == 3 and row["errors"] == 1 and row["tokens_in/ex"] == pytest.approx(200 / 3, abs=0.1)
    assert row["cost_usd/ex"] == pytest.approx((200 * 0.5 + 100 * 1.5) / 1000 / 3, rel=1e-4)
    assert all(b["model"] == "big-model" and b["temperature"] == 0.0 for b in bodies)
    evals = json.loads(next(Path(out["run_dir"], "evals").glob("*.json")).read_text())["rows"]
    failed = [r for r in evals if r["status"] == "error"]
    assert len(failed) == 1 and "400" in failed[0]["reason"]


def test_saved_program_gives_same_predictions_in_another_process(stories_chat, tmp_path):
    splits = data.load_splits("gsm8k", 3, 0, 20, seed=3)
    spec = lms.local_spec(str(stories_chat), max_tokens=12)
    info = run.compile_approach("bootstrap", {"task": "gsm8k"}, spec, splits["train"], [], tmp_path / "prog.json")
    assert info["demos"] >= 1
    program_spec = {"task": "gsm8k", "cot": True}
    here = run.evaluate_saved(program_spec, info["program_file"], spec, splits["test"], tmp_path / "here.json")["rows"]
    threaded = run.evaluate_saved(program_spec, info["program_file"], spec, splits["test"], tmp_path / "t.json",
                                  num_threads=4)["rows"]
    script = ("import json,sys; from reasonlab.dspy_compile import lm, run; "
              "spec = lm.spec_from_dict(json.loads(sys.argv[1])); rows = json.loads(sys.argv[2]); "
              "out = run.evaluate_saved({'task': 'gsm8k', 'cot': True}, sys.argv[3], spec, rows, sys.argv[4]); "
              "print(json.dumps([[r['answer'], r['reasoning'], r['status']] for r in out['rows']]))")
    env = {**os.environ, "REASONLAB_HOME": str(tmp_path / "other-home"), "PYTHONPATH": str(ROOT)}  # no shared cache
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(spec.to_dict()), json.dumps(splits["test"]),
                           info["program_file"], str(tmp_path / "there.json")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(there) == 20
    assert there == [[r["answer"], r["reasoning"], r["status"]] for r in here]
    assert [r["reasoning"] for r in threaded] == [r["reasoning"] for r in here]


def test_miprov2_light_wiring(stories_chat, tmp_path, monkeypatch):
    """MIPROv2(auto="light") on a tiny subset: the student is stories260K in-process, the proposer (prompt model)
    a real loopback OpenAI-compatible server; the compiled program carries the proposed instruction."""
    monkeypatch.setenv("REASONLAB_LLM_MODEL", "proposer")
    with ScriptedLLM([("ok", FORMATTED)]) as srv:
        monkeypatch.setenv("REASONLAB_LLM_BASE_URL", srv.base_url)
        teacher = resolve_lm("env", temperature=0.0, max_tokens=64)
        splits = data.load_splits("gsm8k", 3, 2, 0, seed=5)
        student = lms.local_spec(str(stories_chat), max_tokens=8)
        info = run.compile_approach("mipro", {"task": "gsm8k"}, student, splits["train"], splits["dev"],
                                    tmp_path / "mipro.json", teacher=teacher,
                                    options={"mipro": {"max_bootstrapped_demos": 1, "max_labeled_demos": 1,
                                                       "data_aware_proposer": False}})
        assert srv.posts() >= 1
    saved = json.loads(Path(info["program_file"]).read_text())
    instructions = saved["solve.predict"]["signature"]["instructions"]
    assert info["compile_usage"]["lm_calls"] >= 2
    assert instructions in ("Solve the problem step by step and give the final number.",
                            programs.MathQA.__doc__.strip())


def test_engine_batches_concurrent_requests_with_the_same_answers(stories_chat):
    """num_threads=4 without DSPy's cache: the engine runs waiting requests as one left-padded generate, and
    every example's answer, reasoning and token counts equal the one-at-a-time run's."""
    spec = lms.local_spec(str(stories_chat), max_tokens=16)
    rows = data.load_splits("gsm8k", 0, 0, 8, seed=13)["test"]
    program = programs.build_program({"task": "gsm8k", "cot": True})
    lm = lms.build_lm(spec).copy(cache=False)
    engine = lms._engine_for(spec)
    before = len(engine.batch_sizes)
    one_by_one = evaluate.evaluate_program(program, rows, "gsm8k", lm, num_threads=1)
    sequential_batches = engine.batch_sizes[before:]
    threaded = evaluate.evaluate_program(program, rows, "gsm8k", lm, num_threads=4)
    threaded_batches = engine.batch_sizes[before + len(sequential_batches):]
    assert set(sequential_batches) == {1} and len(sequential_batches) == len(rows)
    assert max(threaded_batches) > 1 and sum(threaded_batches) == len(rows)
    fields = ("answer", "reasoning", "status", "prompt_tokens", "completion_tokens")
    assert [[r[f] for f in fields] for r in threaded] == [[r[f] for f in fields] for r in one_by_one]
    assert all(r["completion_tokens"] > 0 for r in threaded)


def test_two_children_give_the_sweep_its_figures_and_plot(stories_chat, tiny_models, tmp_path):
    """Two dspy-compile runs as two children of the repo's sweep: their own artifacts give every column of
    the comparison (accuracy with its CI, cost, the reference's share) and the accuracy-vs-cost PNG is written."""
    import asyncio
    import math

    from flows.sweep_spec import (comparison_markdown, comparison_rows, load_sweep, metrics_from_artifacts,
                                  plot_comparison)
    from reasonlab.dspy_compile.sweep_metrics import COLUMNS
    from tasks.run_info import read_flow_run

    spec = load_sweep(ROOT / "deployments" / "sweeps" / "dspy_compile_models.yaml")
    base = spec.children()[0]["parameters"]
    assert set(base) <= set(dspy_compile.parameters.properties), base
    small = {**base, "compile": {"approaches": ["predict", "cot"]}, "reference": {"model": str(stories_chat)},
             "data": {"train_size": 0, "dev_size": 0, "test_size": 3}, "sampling": {"max_tokens": 8}}
    children = []
    for label, student in (("stories", stories_chat), ("llama", tiny_models["llama"])):
        state = dspy_compile(**{**small, "model": str(student)}, return_state=True)
        states, artifacts = asyncio.run(read_flow_run(state.state_details.flow_run_id))
        children.append({"label": f"{label} | gsm8k-small", "model": label, "set": "gsm8k-small",
                         "state": state.name, "task_states": states,
                         "metrics": metrics_from_artifacts(artifacts, spec.deployment)})
    rows = comparison_rows(children)
    for row in rows:
        blank = [c for c in COLUMNS if row.get(c) is None or (isinstance(row[c], float) and math.isnan(row[c]))]
        # a share of a reference that scored 0 has no value (tiny random models answer nothing right)
        assert blank == ([] if row["reference_accuracy"] else ["pct_of_reference_score"]), (row["child"], blank)
        assert row["accuracy_ci95_low"] <= row["accuracy"] <= row["accuracy_ci95_high"]
        assert row["cost_unit"] == "compute_s" and row["cost_per_example"] > 0
        assert {"predict_accuracy", "cot_accuracy", "cot_ci95_high", "cot_cost"} <= set(row)
    assert rows[0]["pct_of_reference_cost"] > 0 and rows[0]["reference_accuracy"] is not None
    md = comparison_markdown(spec.name, spec.deployment, rows, None)
    assert "accuracy_ci95_low" in md and "| stories \\| gsm8k-small | Completed |" in md
    png = plot_comparison(spec.name, spec.deployment, rows, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_endpoint_blocks_key_is_sent_but_never_stored(tmp_path):
    """An LLMEndpoint block with a stored key: the task layer reads it and hands it to the library; the server
    gets it, and no result, file or artifact holds it."""
    import asyncio

    from blocks.llm_endpoint import LLMEndpoint
    from reasonlab import paths
    from tasks.run_info import read_flow_run

    secret = "sk-dspy-block-secret-4711"
    with ScriptedLLM([("ok", FORMATTED)]) as srv:
        LLMEndpoint(base_url=srv.base_url, model="block-model", api_key=secret, timeout_s=5).save(
            "dspy-test-llm", overwrite=True)
        state = dspy_compile(models=["endpoint:dspy-test-llm"], compile={"approaches": ["cot"]},
                             data={"train_size": 0, "dev_size": 0, "test_size": 2, "seed": 11},
                             sampling={"max_tokens": 32}, return_state=True)
        auth = {r["authorization"] for r in srv.requests}
    out = state.result()
    assert auth == {f"Bearer {secret}"} and out["table"][0]["n"] == 2 and out["table"][0]["errors"] == 0
    _, artifacts = asyncio.run(read_flow_run(state.state_details.flow_run_id))
    assert secret not in json.dumps(artifacts) and secret not in json.dumps(out)
    for root in (Path(out["run_dir"]), paths.results_dir()):
        for f in root.rglob("*"):
            assert not f.is_file() or secret.encode() not in f.read_bytes(), f
