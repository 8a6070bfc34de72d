"""The study across cases as Prefect work: its cases, the LLM-written texts of every case and arm, and the
study report (artifact and files)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from reasonlab.concept_sft import case_extras
from reasonlab.concept_sft import study as S
from reasonlab.concept_sft.prompts import normalized
from reasonlab.concept_sft.study_plan import limit_cases, plan_study
from reasonlab.concept_sft.study_report import study_markdown, study_rows
from reasonlab.io import write_json, write_text
from reasonlab.models import ResolvedModel
from tasks.artifacts import image_markdown, publish_image, publish_run_folder
from tasks.conventions import task_options
from tasks.prompt_generation import resolve_endpoint
from reasonlab.local_server import serving
from tasks.texts import LIVE, case_folder, client_for, match_budget, name_concept, write_arm_texts

LLM_REQUESTS_AT_ONCE = 32  # a served local model batches concurrent requests (continuous batching)

__all__ = ["target_cases", "plan_study", "write_study_texts", "publish_study"]


def target_cases(filtered: dict, max_cases: int | None, prompts_file: Path) -> list[dict]:
    cases = limit_cases(filtered["target_cases"], max_cases, str(prompts_file))
    print(f"{len(cases)} target cases studied (of {len(filtered['target_cases'])} the filter found)")
    return cases


@task(name="complete-case", **task_options(case_extras.VERSION, retries=1, exclude=LIVE))
def complete_case(endpoint, case: dict, file_rows: list[dict], target_prompts: list[str], out_file: str,
                  n_paraphrases: int = 3, n_neighbours: int = 3, live=None, key_block: str | None = None) -> dict:
    """A case the prompts file gives bare: neighbours from the file and paraphrases by the LLM (kept if given)."""
    record = {"paraphrases": list(case.get("paraphrases") or []), "neighbours": list(case.get("neighbours") or [])}
    if not record["neighbours"]:
        record["neighbours"] = case_extras.file_neighbours(case, file_rows, set(target_prompts), n_neighbours)
    if not record["paraphrases"]:
        with client_for(endpoint, live, key_block) as client:
            record |= case_extras.write_paraphrases(client, case, n_paraphrases)
    write_json(out_file, {"case": case["prompt"], **record})
    get_run_logger().info(f"{case['prompt']!r}: {len(record['paraphrases'])} paraphrases, "
                          f"{len(record['neighbours'])} neighbours")
    return record


def _in_threads(calls: list[tuple]) -> list:
    """Run (task, parameters) pairs at once in threads (each still cached), results in order."""
    with ThreadPoolTaskRunner(max_workers=LLM_REQUESTS_AT_ONCE) as runner:
        futures = [runner.submit(t, parameters=p) for t, p in calls]
        return [f.result() for f in futures]


def write_study_texts(base: ResolvedModel, config, cases: list[dict], candidates: list[list[dict]],
                      file_rows: list[dict], text_sets: dict, study, llm, run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(completed cases, per case {named, arms}): paraphrases and neighbours where the file has none, the concept
    named from the candidates (and from the prompt alone), each arm's texts; the arms matched in budget. One LLM
    server for the stage, started only if some task is not Cached; the requests of all cases go at once."""
    endpoint = resolve_endpoint(llm.endpoint, llm.local_model)
    folders = [run_dir / "texts" / case_folder(c) for c in cases]
    targets = sorted({normalized(c["prompt"]) for c in cases})
    rules = {"n_texts": study.n_texts, "min_tokens": study.min_tokens, "max_tokens": study.max_tokens,
             "max_attempts": study.max_attempts}
    key = {"key_block": llm.endpoint}
    with serving(endpoint) as live:
        extras = _in_threads([(complete_case, dict(endpoint=endpoint, case=c, file_rows=file_rows,
                                                   target_prompts=targets, out_file=str(f / "case.json"), live=live,
                                                   **key)) for c, f in zip(cases, folders)])
        cases = [{**c, "paraphrases": e["paraphrases"], "neighbours": e["neighbours"]} for c, e in zip(cases, extras)]
        guided = [c for c in ("concept",) if c in study.arms] + (["concept_unguided"] if "concept_unguided" in
                                                                   study.arms else [])
        named = _in_threads([(name_concept, dict(endpoint=endpoint, case=c, candidates=cands if arm == "concept"
                                                 else None, out_file=str(f / f"name-{arm}.json"), live=live, **key))
                             for c, cands, f in zip(cases, candidates, folders) for arm in guided])
        named_of = {(i, arm): named[i * len(guided) + j] for i in range(len(cases)) for j, arm in enumerate(guided)}
        calls = [(write_arm_texts, dict(endpoint=endpoint, case=c, arm=arm, concept=(named_of.get((i, arm)) or {})
                                        .get("concept"), rules=rules, model=base, file_rows=file_rows,
                                        out_file=str(f / f"{arm}.json"), live=live,
                                        file_entry=_file_entry(text_sets, c), **key))
                 for i, (c, f) in enumerate(zip(cases, folders)) for arm in study.arms]
        written = _in_threads(calls)
    records = []
    for i, (case, folder) in enumerate(zip(cases, folders)):
        arms = {arm: {**written[i * len(study.arms) + j], **_neuron(named_of.get((i, arm)))}
                for j, arm in enumerate(study.arms)}
        usable = {a: r["texts"] for a, r in arms.items() if not r.get("skipped")}
        matched = match_budget(usable, base, config, str(folder / "budget.json"), tolerance=study.budget_tolerance)
        for arm, texts in usable.items():
            fit = matched["report"]["arms"][arm]
            arms[arm] = ({**arms[arm], "texts": matched["texts"][arm], "train_tokens": fit["after"]} if fit["matched"]
                         else {**arms[arm], "skipped": f"not matched in budget with the other arms: {fit['reason']}"})
        records.append({"case": case["prompt"], "named": [named_of[(i, a)] | {"arm": a} for a in guided],
                        "arms": arms, "budget": matched["report"]})
    return cases, records


def _file_entry(text_sets: dict, case: dict) -> dict | None:
    entry = text_sets.get(normalized(case["prompt"]))
    return entry.model_dump() if entry else None


def _neuron(named: dict | None) -> dict:
    """The concept arm's neuron: only the candidate the LLM really picked."""
    return {"neuron": named.get("neuron")} if named else {}


def publish_study(base: ResolvedModel, base_eval: dict, experiments: list[dict], texts: list[dict],
                  skipped: list[dict], study, experiment, formats, run_dir: Path, wall_s: float) -> dict:
    """study.json, study.md, forest.png under run_dir/study; the report artifact; the verdicts on the console."""
    out_dir = run_dir / "study"
    rows = study_rows(base_eval, experiments, formats.evaluation[0], experiment.neighbour_tolerance)
    table = S.comparisons(rows)
    verdicts = S.findings(table)
    image = None
    if table:
        png = S.forest_plot(table, out_dir / "forest.png")
        publish_image(png, key="concept-sft-study-forest", description="Each arm against concept, paired by case")
        image = image_markdown(png, "forest plot")
    records = [t for case in texts for t in [*case.get("named", []), *case["arms"].values()]]
    summary = {"model": base.name, "cases": len({r["case"] for r in rows}) if rows else 0, "arms": study.arms,
               "seeds": experiment.seeds, "experiments": len(rows), "wall_s": wall_s}
    markdown = study_markdown(verdicts, table, image, summary, records, skipped)
    result = {"summary": summary, "findings": verdicts, "comparisons": table, "rows": rows, "skipped": skipped,
              "texts": texts}
    write_json(out_dir / "study.json", result)
    write_text(out_dir / "study.md", markdown)
    create_markdown_artifact(markdown, key="concept-sft-study-report")
    create_table_artifact([{k: f[k] for k in ("finding", "verdict", "n_cases", "mean_diff", "p_holm")}
                           for f in verdicts], key="concept-sft-study-findings",
                          description="Each finding of the concept-SFT study, tested across cases")
    publish_run_folder(run_dir, key="concept-sft-study-run-folder", description="The study's files")
    print("\n" + "\n".join(f"{f['verdict']:>12}  n={f['n_cases']}  {f['finding']}" for f in verdicts)
          + "".join(f"\nskipped {s['case']!r} / {s['arm']}: {s['reason']}" for s in skipped))
    return {"run_dir": str(run_dir), "cases": summary["cases"], "experiments": len(rows), **result}
