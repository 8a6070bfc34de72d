"""The instruction-retrieval units of work as cached Prefect tasks (model-heavy ones tagged `gpu`), and the
publishing of their figures (tables, reports, the scaling chart) as artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from reasonlab.io import read_structured, write_json, write_text
from reasonlab.models import ResolvedModel, load_model
from reasonlab.retrieval import option_scoring, plots, report
from reasonlab.retrieval.embedders import EmbedderSpec
from reasonlab.retrieval.experiment import RunFolders, chance_rate, chunks, main_metric, slug
from reasonlab.retrieval.retrieve import rank_domains
from reasonlab.retrieval.sweep_metrics import ACCURACY_KEY, DIFFERENCES_KEY  # the tables the sweep reads
from tasks.artifacts import image_markdown
from tasks.conventions import task_options


@task(name="retrieve-domains", **task_options("2"))
def retrieve_domains(questions: list[dict], library: dict, embedder: EmbedderSpec) -> list[dict]:
    """Dense / BM25 / RRF domain rankings per question (library embeddings cached by library hash + embedder)."""
    out = rank_domains(questions, library, embedder)
    get_run_logger().info(f"ranked {len(library)} domains for {len(questions)} questions "
                          f"(library embeddings {'from the cache' if out['library_cached'] else 'computed'})")
    return out["per_question"]


@task(name="score-options", **task_options(option_scoring.VERSION, gpu=True, retries=1))
def score_condition(model: ResolvedModel, questions: list[dict], items: list[dict], out_file: str,
                    use_chat_template: bool = False, debias: bool = True, option_text_norm: bool = True,
                    device: str = "auto", dtype: str = "auto") -> dict:
    """Score every item of one condition (its instruction before the question); writes `out_file`."""
    lm, tokenizer = load_model(model, device, dtype)
    logger = get_run_logger()

    def progress(i: int, n: int) -> None:
        if i % 50 == 0 or i == n:
            logger.info(f"{model.name}: scored {i}/{n} -> {out_file}")

    rows = option_scoring.score_items(lm, tokenizer, questions, items, use_chat_template, debias, option_text_norm,
                                      progress)
    n_params = sum(p.numel() for p in lm.parameters())
    write_json(out_file, {"model": model.to_dict(), "n_params": n_params, "rows": rows})
    return {"n_params": n_params, "rows": rows}


def score_conditions(model: ResolvedModel, set_name: str, questions: list[dict], items: dict[str, list[dict]],
                     run: RunFolders, scoring: Any) -> tuple[dict[str, list[dict]], int | None]:
    """({condition: score rows}, parameter count): each condition in cached chunks of `scoring.chunk_size`."""
    scored, n_params = {}, None
    for condition, condition_items in items.items():
        scored[condition] = []
        for chunk in chunks(condition_items, scoring.chunk_size):
            ids = {it["id"] for it in chunk}
            out = score_condition(model, [q for q in questions if q["id"] in ids], chunk,
                                  str(run.chunk_file(model.name, set_name, condition, chunk)),
                                  scoring.use_chat_template, scoring.debias, scoring.option_text_norm,
                                  scoring.device, scoring.dtype)
            scored[condition] += out["rows"]
            n_params = out["n_params"]
    return scored, n_params


@task(name="summarize", **task_options("2"))
def summarize(questions: list[dict], scored: dict[str, list[dict]], out_file: str, n_boot: int = 2000,
              seed: int = 0) -> dict:
    summary = report.summarize(questions, scored, n_boot=n_boot, seed=seed)
    write_json(out_file, summary)
    return summary


@task(name="plot-results", **task_options("3"))
def plot_results(questions: list[dict], scored: dict[str, list[dict]], summary: dict, out_dir: str,
                 title: str, n_distribution_questions: int = 3) -> dict[str, str]:
    """PNG files: accuracy per condition (the report's picture), option distributions (first questions),
    information gain, reliability diagram."""
    out = Path(out_dir)
    shown = questions[:n_distribution_questions]
    metric = report.main_metric(summary)
    files = {"accuracy": plots.condition_accuracy(summary["conditions"], metric, out / "accuracy.png",
                                                  f"{title}: {metric} per condition", chance_rate(questions)),
             "option_distributions": plots.option_distributions(shown, scored, summary["distribution"],
                                                                out / "option_distributions.png",
                                                                f"{title}: distribution over options; * = gold"),
             "information_gain": plots.information_gain_hist(summary["info_gain"], out / "information_gain.png",
                                                             f"{title}: information gain vs no instruction"),
             "reliability": plots.reliability_diagram(summary["reliability"], out / "reliability.png",
                                                      f"{title}: reliability diagram")}
    return {k: str(v) for k, v in files.items()}


def _r(x: float | None) -> float | None:
    return None if x is None or x != x else round(float(x), 4)


def accuracy_rows(model: str, set_name: str, summary: dict) -> list[dict]:
    """One row per condition: n, each accuracy with its Wilson 95 % CI (fractions), and the other figures."""
    rows = []
    for c in summary["conditions"]:
        row = {"model": model, "questions": set_name, "condition": c["condition"], "n": c["n"]}
        for v in report.VARIANTS:
            low, high = c.get(f"{v}_ci") or (None, None)
            row.update({v: _r(c.get(v)), f"{v}_low": _r(low), f"{v}_high": _r(high)})
        row.update({k: _r(c.get(k)) for k in ("info_gain_bits", "brier", "ece")})
        row["predicted letters"] = " ".join(f"{k}{100 * v:.0f}" for k, v in (c.get("pred_letters") or {}).items())
        rows.append(row)
    return rows


def difference_rows(model: str, set_name: str, summary: dict) -> list[dict]:
    return [{"model": model, "questions": set_name, **{k: _r(v) if isinstance(v, float) else v for k, v in d.items()}}
            for d in summary["differences"]]


def publish_results(model: str, set_name: str, summary: dict, pngs: dict[str, str], retrieval: list[dict],
                    out_dir: Path) -> str:
    """results.md beside the summary, and its markdown artifact (the answer, the accuracy picture, the detail, the
    other plots); returns the markdown."""
    title = f"{model} on {set_name}"
    markdown = report.summary_markdown(title, summary, retrieval, image=image_markdown(pngs["accuracy"], "accuracy"))
    markdown += "\n## More plots\n\n" + "\n\n".join(f"### {k}\n\n{image_markdown(v, k)}"
                                                    for k, v in pngs.items() if k != "accuracy") + "\n"
    write_text(out_dir / "results.md", markdown)
    create_markdown_artifact(markdown, key=slug(f"instruction-retrieval-{model}-{set_name}-report"))
    print(f"\n{title}\n\n{report.headline_markdown(summary)}\nEvery figure: {out_dir / 'results.md'}")
    return markdown


def publish_tables(results: dict[str, dict[str, dict]]) -> None:
    """The accuracy and paired-difference tables of every model x question set (the sweep's figures)."""
    create_table_artifact([r for m, per in results.items() for s, res in per.items()
                           for r in accuracy_rows(m, s, res["summary"])], key=ACCURACY_KEY,
                          description="accuracy per model, question set and condition (fractions, Wilson 95 % CI)")
    create_table_artifact([r for m, per in results.items() for s, res in per.items()
                           for r in difference_rows(m, s, res["summary"])], key=DIFFERENCES_KEY,
                          description="condition - reference on shared questions: paired bootstrap 95 % CI, McNemar")


def publish_scaling(run: RunFolders, results: dict[str, dict[str, dict]], sets: dict[str, list[dict]],
                    debias: bool) -> dict[str, dict]:
    """Each model's measured point per question set in the run folder (a sweep's children add theirs), the
    scaling chart over every point there, and its markdown artifact."""
    metric, scaling = main_metric(debias), {}
    for name, qs in sets.items():
        points_dir = run.root / "scaling" / name
        for model_name, per_set in results.items():
            write_json(points_dir / f"{slug(model_name)}.json",
                       {"model": model_name, "n_params": per_set[name]["n_params"],
                        "conditions": per_set[name]["summary"]["conditions"]})
        points = [read_structured(p) for p in sorted(points_dir.glob("*.json"))]
        png = plots.scaling_chart(points, metric, run.root / f"scaling_{name}.png",
                                  f"{name}: {metric} by model size (measured, Wilson 95 % CIs)", chance_rate(qs))
        scaling[name] = {"png": str(png), "models": [p["model"] for p in points]}
    create_markdown_artifact("# Instruction retrieval: scaling\n\n" + "\n".join(
        f"## {name} ({', '.join(s['models'])})\n\n{image_markdown(s['png'], f'scaling on {name}')}\n"
        for name, s in scaling.items()), key="instruction-retrieval-scaling")
    return scaling
