"""The concept-SFT stages as standalone commands (the concept-SFT study's scripts), beside the flow:

    reasonlab filter --input data/target_prompts.json --output filtered_prompts.json [--model M]
    reasonlab attribute "The primary hormone regulating blood pressure is" --contrastive " Ald" " Ren" \\
        --answer-prefix " Answer:" --output outputs/ald [--counterfactual "..."] [--compare-model CHECKPOINT]
    reasonlab sft --config my_sft.yaml [--output checkpoints/ald-sft]
    reasonlab evaluate --model checkpoints/ald-sft --prompts filtered_prompts.json [--base smollm2-135m-instruct]

One `add_<command>` (its arguments) and one `run_<command>` (its work) per command; `add_commands` registers
them all on the `reasonlab` parser and `COMMANDS` maps each name to its handler. Handlers raise
ReasonlabError for bad input (the CLI prints it as one `error: ...` line) and print a short summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reasonlab.concept_sft import attribution as A, topk_filter
from reasonlab.errors import ReasonlabError

def add_prompt_and_device_args(p, top_k_help: str = "next tokens shown and ranked") -> None:
    """The options every model-running command shares: how the prompt is shown, k, where the model runs."""
    p.add_argument("--answer-prefix", default=" Answer:", help="text after the assistant header (chat format)")
    p.add_argument("--system-prompt", default="")
    p.add_argument("--top-k", type=int, default=10, help=top_k_help)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")


# ---------------------------------------------------------------------------- attribute


def add_attribute(sub) -> None:
    p = sub.add_parser("attribute", help="contrastive attribution graph of one prompt (the concept-SFT study's analyze.py)")
    p.add_argument("prompt")
    p.add_argument("--contrastive", nargs=2, required=True, metavar=("CORRECT", "WRONG"),
                   help="the two one-token answers; m = logit(CORRECT) - logit(WRONG)")
    p.add_argument("--output", required=True, help="folder for graph.json / graph.png / graph.html")
    p.add_argument("--model", default=None, help="registry name, local folder or Hub id (default: the default model)")
    p.add_argument("--format", default="chat", choices=["chat", "completion"])
    p.add_argument("--tau", type=float, default=0.05)
    p.add_argument("--prune-mode", default=A.PRUNE_MODE, choices=A.PRUNE_MODES)
    p.add_argument("--method", default="act_x_grad", choices=["act_x_grad", "integrated_gradients"])
    p.add_argument("--max-nodes", type=int, default=30)
    p.add_argument("--ablate-top", type=int, default=20)
    p.add_argument("--counterfactual", default=None,
                   help="a prompt of the same token length whose answer is the other side: adds the patching check")
    p.add_argument("--compare-model", default=None,
                   help="an SFT checkpoint: re-attribute the graph on it (diff.json, diff.md, sft/graph.*)")
    add_prompt_and_device_args(p, top_k_help="wrong-pushing base nodes followed after SFT")


def _rho(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run_attribute(args: argparse.Namespace) -> dict:
    from reasonlab.concept_sft.attribution_graph import attribution_graph, write_graph
    from reasonlab.models import DEFAULT_MODEL, load_model, resolve_model

    A.check_tau(args.tau)
    if args.top_k < 1:
        raise ReasonlabError(f"--top-k must be >= 1, got {args.top_k}")
    base = resolve_model(args.model or DEFAULT_MODEL)
    sft = resolve_model(args.compare_model) if args.compare_model else None  # both found before any model work
    model, tokenizer = load_model(base, args.device, args.dtype)
    graph = attribution_graph(model, tokenizer, args.prompt, tuple(args.contrastive), fmt=args.format,
                              system_prompt=args.system_prompt, answer_prefix=args.answer_prefix, tau=args.tau,
                              prune_mode=args.prune_mode, method=args.method, max_nodes=args.max_nodes,
                              ablate_top=args.ablate_top, counterfactual=args.counterfactual)
    files = write_graph(graph, args.output)
    print(f"{graph['metric']} = {graph['logit_diff']:+.4f}  ({base.name}, {args.format}, {len(graph['nodes'])} nodes, "
          f"{len(graph['edges'])} edges)")
    print(f"ablation rho = {_rho(graph['ablation']['spearman'])} over {len(graph['ablation']['nodes'])} nodes")
    if "patching" in graph:
        pt = graph["patching"]
        print(f"counterfactual {pt['counterfactual']!r}: {graph['metric']} = {pt['counterfactual_logit_diff']:+.4f}")
        print(f"patching rho (real vs attribution patching) = {_rho(pt['spearman'])}, "
              f"(real vs act x grad influence) = {_rho(pt['spearman_vs_influence'])} over {len(pt['nodes'])} nodes")
        print(f"  over the {pt['downstream_nodes']} nodes at or after the first changed position "
              f"{pt['first_changed_position']}: {_rho(pt['spearman_downstream'])}, "
              f"vs influence {_rho(pt['spearman_vs_influence_downstream'])}")
    for n in sorted(graph["nodes"], key=lambda n: -abs(n["influence"]))[:8]:
        print(f"  {n['id']:18} {n['token']!r:14} influence {n['influence']:+.4f}  ({n['origin']})")
    summary = {"graph": files, "logit_diff": graph["logit_diff"], "ablation_spearman": graph["ablation"]["spearman"],
               "patching_spearman": graph["patching"]["spearman"] if "patching" in graph else None}
    if sft is not None:
        from reasonlab.concept_sft.attribution_diff import attribution_diff, write_diff

        sft_model, sft_tokenizer = load_model(sft, args.device, args.dtype)
        diff, sft_graph = attribution_diff(graph, model, tokenizer, sft_model, sft_tokenizer, top_k=args.top_k,
                                           ablate_top=args.ablate_top)
        summary["diff"] = write_diff(diff, sft_graph, args.output)
        m, w = diff["logit_diff"], diff["top_wrong"]
        print(f"after SFT ({sft.name}): {graph['metric']} {m['base']:+.4f} -> {m['sft']:+.4f} ({m['change']:+.4f})")
        print(f"top {w['k']} wrong-pushing base nodes: {w['lost_abs_influence']} lost |influence| "
              f"(by {w['lost_total']:.4f} in total; |influence| {w['base_abs_total']:.4f} -> {w['sft_abs_total']:.4f}; "
              f"{w['still_same_side']} still push toward the wrong token; median SFT rank {w['median_sft_rank']})")
        r = diff["top_right"]
        print(f"top {r['k']} right-pushing base nodes: {r['lost_abs_influence']} lost |influence| "
              f"(|influence| {r['base_abs_total']:.4f} -> {r['sft_abs_total']:.4f})")
        print(f"spearman base vs SFT influence over {diff['union_nodes']} nodes = {_rho(diff['spearman_union'])}; "
              f"{diff['new_nodes_total']} new nodes in the SFT graph; SFT ablation rho = "
              f"{_rho(diff['checks']['sft_ablation_spearman'])}")
        print(f"wrote {summary['diff']['diff']}")
    print(f"wrote {files['json']}")
    return summary


# ---------------------------------------------------------------------------- sft


def add_sft(sub) -> None:
    p = sub.add_parser("sft", help="fine-tune on concept texts from a YAML SFT config (the concept-SFT study's sft.py)")
    p.add_argument("--config", required=True, help="the SFT config (see configs/concept_sft_default.yaml)")
    p.add_argument("--output", default=None,
                   help="checkpoint folder (default: the config's output_dir, else under REASONLAB_HOME/runs)")


def run_sft_command(args: argparse.Namespace) -> dict:
    from reasonlab import paths
    from reasonlab.concept_sft.sft_config import load_sft_config
    from reasonlab.concept_sft.sft_trainer import run_sft
    from reasonlab.io import sha256_json, write_json
    from reasonlab.models import resolve_model

    if not Path(args.config).is_file():
        raise ReasonlabError(f"SFT config {args.config} not found")
    config = load_sft_config(args.config)
    resolved = resolve_model(config.model_name)
    out = Path(args.output or config.output_dir or paths.runs_dir() / f"sft-{sha256_json(config.model_dump())[:12]}")

    def progress(step: int, total: int, loss: float | None) -> None:
        print(f"step {step}/{total}" + ("" if loss is None else f"  loss {loss:.4f}"), flush=True)

    summary = run_sft(resolved, config, out, progress=progress)
    summary = {"config": str(Path(args.config).resolve()), "model": resolved.to_dict(), **summary}
    summary_file = write_json(out.with_name(out.name + ".summary.json"), summary)
    first, last = (summary["losses"][0], summary["losses"][-1]) if summary["losses"] else (None, None)
    print(f"checkpoint {summary['checkpoint']}: {summary['steps']} steps, loss {first} -> {last}")
    print(f"wrote {summary_file}")
    return summary


# ---------------------------------------------------------------------------- filter


def add_filter(sub) -> None:
    p = sub.add_parser("filter", help="keep the prompts the model gets clearly wrong (the concept-SFT study's filter script)")
    p.add_argument("--input", required=True, help="prompts file: {prompt, answer, topic, paraphrases, neighbours} rows")
    p.add_argument("--output", required=True, help="filtered_prompts.json: target_cases and rejected, with reasons")
    p.add_argument("--model", default=None, help="registry name, local folder or Hub id (default: the default model)")
    p.add_argument("--format", default="completion", choices=["completion", "chat"])
    p.add_argument("--max-rank", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=topk_filter.BATCH_SIZE)
    add_prompt_and_device_args(p)


def run_filter(args: argparse.Namespace) -> dict:
    from reasonlab.concept_sft.prompts import load_prompts
    from reasonlab.concept_sft.topk_filter import filter_prompts
    from reasonlab.io import write_json
    from reasonlab.models import DEFAULT_MODEL, load_model, resolve_model
    from reasonlab.prompt_format import require_formats

    if args.top_k < 1 or not 2 <= args.max_rank <= args.top_k or args.batch_size < 1:
        raise ReasonlabError(f"need --top-k >= 1, 2 <= --max-rank <= --top-k and --batch-size >= 1, got "
                             f"{args.top_k}, {args.max_rank}, {args.batch_size}")
    items = load_prompts(args.input)
    resolved = resolve_model(args.model or DEFAULT_MODEL)
    model, tokenizer = load_model(resolved, args.device, args.dtype)
    require_formats(tokenizer, [args.format], resolved.name)
    result = filter_prompts(model, tokenizer, items, k=args.top_k, max_rank=args.max_rank, fmt=args.format,
                            system_prompt=args.system_prompt, answer_prefix=args.answer_prefix,
                            batch_size=args.batch_size)
    out = write_json(args.output, {"model": resolved.to_dict(), **result})
    for c in result["target_cases"]:
        print(f"target  {c['prompt']!r}: {c['wrong_word'].strip()!r} {c['p_wrong']:.1%} > {c['answer']!r} "
              f"{c['p_correct']:.1%} (rank {c['correct_rank']})")
    print(f"{len(result['target_cases'])} of {len(items)} prompts are target cases; wrote {out}")
    return result


# ---------------------------------------------------------------------------- evaluate


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model on target cases, paraphrases and neighbours")
    p.add_argument("--model", required=True, help="the model to score (an SFT checkpoint, a name, a Hub id)")
    p.add_argument("--prompts", required=True, help="the filter's output (its target_cases carry the wrong answer)")
    p.add_argument("--base", default=None, help="also score this model and report the edit measures against it")
    p.add_argument("--formats", nargs="+", default=["completion"], choices=["completion", "chat"])
    p.add_argument("--output", default=None, help="JSON file (default: <prompts stem>.eval.json beside --prompts)")
    p.add_argument("--heldout", default="data/heldout_text.txt", help="general text for the perplexity")
    p.add_argument("--neighbour-tolerance", type=float, default=2.0)
    add_prompt_and_device_args(p)


def load_target_cases(path: str) -> list[dict]:
    from reasonlab.io import read_structured

    if not Path(path).is_file():
        raise ReasonlabError(f"prompts file {path} not found")
    data = read_structured(path)
    cases = data.get("target_cases") if isinstance(data, dict) else None
    if not cases or not all(isinstance(c, dict) and c.get("wrong_word") for c in cases):
        raise ReasonlabError(f"{path} holds no target cases with a wrong answer: run `reasonlab filter --input "
                             "PROMPTS --output F` and evaluate F")
    return cases


def run_evaluate(args: argparse.Namespace) -> dict:
    from reasonlab import paths
    from reasonlab.concept_sft import edit_metrics as M
    from reasonlab.concept_sft.evaluate import evaluate_cases, load_heldout
    from reasonlab.models.scoring import text_perplexity
    from reasonlab.io import write_json, write_text
    from reasonlab.models import load_model, resolve_model
    from reasonlab.prompt_format import require_formats

    if args.neighbour_tolerance <= 1:
        raise ReasonlabError(f"--neighbour-tolerance must be > 1 (a factor), got {args.neighbour_tolerance}")
    cases = load_target_cases(args.prompts)
    heldout = load_heldout(paths.find_input(args.heldout))
    models = {"model": resolve_model(args.model)} | ({"base": resolve_model(args.base)} if args.base else {})
    scored = {}
    for role, resolved in models.items():
        model, tokenizer = load_model(resolved, args.device, args.dtype)
        require_formats(tokenizer, args.formats, resolved.name)
        scored[role] = {"model": resolved.to_dict(),
                        "rows": evaluate_cases(model, tokenizer, cases, args.formats, k=args.top_k,
                                               system_prompt=args.system_prompt, answer_prefix=args.answer_prefix),
                        "perplexity": text_perplexity(model, tokenizer, heldout)}
    result = dict(scored)
    if args.base:
        result["figures"] = M.summarize(scored["base"], [scored["model"]], cases, args.formats,
                                        args.neighbour_tolerance)
    out = Path(args.output or Path(args.prompts).with_suffix(".eval.json"))
    write_json(out, result)
    for r in scored["model"]["rows"]:
        wrong = "" if r["p_wrong"] is None else f"  p({r['wrong_word'].strip()})={r['p_wrong']:.2%}"
        print(f"{r['kind']:10} {r['format']:10} {r['text'][:60]!r}: p({r['answer']})={r['p_correct']:.2%}{wrong}"
              f"  top-1 {r['top1']!r}")
    print(f"held-out perplexity {scored['model']['perplexity']:.2f}"
          + (f" (base {scored['base']['perplexity']:.2f})" if args.base else ""))
    if args.base:
        write_text(out.with_suffix(".md"), M.results_markdown(result["figures"]))
        print(M.results_markdown(result["figures"]))
    print(f"wrote {out}")
    return result


# ---------------------------------------------------------------------------- registration

COMMANDS = {"filter": run_filter, "attribute": run_attribute, "sft": run_sft_command, "evaluate": run_evaluate}
ADDERS = (add_filter, add_attribute, add_sft, add_evaluate)


def add_commands(sub) -> None:
    """Register this module's subcommands on the `reasonlab` subparsers."""
    for add in ADDERS:
        add(sub)
