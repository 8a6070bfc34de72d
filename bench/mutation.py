"""Mutation score of the pure core, with mutmut (pyproject's [tool.mutmut] says which files and which tests).

    pip install -e ".[bench]"
    python bench/mutation.py [--max-children 2] [--source DIR] [--keep DIR]

Modules: the attribution math, the cache policy and retry rule (tasks/conventions.py), the filter's decisions,
the MBPP split, the LLM client's retry rules, the evaluation's probabilities. mutmut runs in a scratch copy
(never in the checkout): `--source DIR` takes the code and tests from another tree (e.g. an older commit, for a
"before" figure) while the configuration stays this checkout's. Each mutant runs only the fast unit tests that
call the mutated function, with no Prefect server (REASONLAB_TEST_PREFECT=0), one thread per process.

Mutants listed in bench/mutation_equivalent.txt (one per line, `name  # why it is equivalent`) were reviewed as
equivalent: they are counted apart and left out of the score. Prints one line per module, the survivors (their
diffs go to <scratch>/survivors.txt), then mutants=, killed=, survived=, equivalent=, score= (killed over
non-equivalent mutants). Exits 1 when mutmut fails or finds no mutants (the premise of the figure).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The pure core, per module: only these functions are mutated (the rest of each file - model plumbing, file
# loading, formatting - is fenced off with mutmut's `# pragma: no mutate start/end` in the scratch copy only).
CORE = {
    "reasonlab/concept_sft/attribution.py": {"logit_diff", "check_tau", "act_x_grad", "integrated_gradients",
                                             "attribute", "prune_nodes", "compute_edges", "ablation_effects",
                                             "rank_agreement"},
    "tasks/conventions.py": {"plain", "PlainInputs.compute_key", "transient_only", "task_options"},
    "reasonlab/concept_sft/topk_filter.py": {"top_tokens", "starts_answer", "why_not_clearly_wrong", "classify",
                                             "why_wrong_word_is_not_wrong", "decide", "filter_prompts"},
    "reasonlab/concept_sft/answer_prob.py": {"variant_sequences", "length_sorted_batches", "forward_logprobs",
                                             "score_sequences", "word_break", "greedy_words"},
    "reasonlab/concept_sft/edit_metrics.py": {"case_figures", "mean_sd", "beyond_spread", "verdict", "aggregate"},
    "reasonlab/activations/mbpp.py": {"cyclomatic_complexity", "assign_splits"},
    "reasonlab/llm_client.py": {"retry_after_seconds", "redact", "_RateLimiter.__init__", "_RateLimiter.wait",
                                "LLMClient._backoff", "LLMClient.chat"},
    "reasonlab/concept_sft/evaluate.py": {"evaluate_cases", "perplexity"},
}
EQUIVALENT = Path(__file__).with_name("mutation_equivalent.txt")
COPY = ("reasonlab", "tasks", "tests", "flows", "blocks", "deployments", "configs", "data")
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
# every survivor's diff in one process (`mutmut show` once per mutant costs a second of start-up each)
SHOW_DIFFS = """
import sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
for name in open(sys.argv[1]).read().split():
    try:
        print(f'# {name}\\n' + get_diff_for_mutant(name, path=find_mutant(name).path))
    except Exception as e:
        print(f'# {name}: no diff ({type(e).__name__}: {e})')
"""


def fence_off_non_core(path: Path, core: set[str]) -> None:
    """Fence off every function or method of `path` not named in `core`: a `# pragma: no mutate block` line
    opens its body (the rest of the body is skipped) and `# pragma: no mutate` ends each line of its signature."""
    lines = path.read_text().splitlines()
    defs = dict(_all_defs(lines))
    missing = core - set(defs)
    if missing:
        raise SystemExit(f"bench/mutation.py: {path.name} has no function(s) {sorted(missing)} (update CORE)")
    edits = []  # (line index, kind, indent)
    for name, f in defs.items():
        if name in core:
            continue
        first = min([f.lineno, *(d.lineno for d in f.decorator_list)])
        body = f.body[0].lineno
        for i in range(first, max(body, first + 1)):
            edits.append((i - 1, "bare", ""))
        if body > f.lineno:
            edits.append((body - 1, "block", " " * f.body[0].col_offset))
    for index, kind, indent in sorted(edits, reverse=True):
        if kind == "bare":
            lines[index] += "  # pragma: no mutate"
        else:
            lines.insert(index, f"{indent}# pragma: no mutate block")
    path.write_text("\n".join(lines) + "\n")


def _all_defs(lines: list[str]):
    import ast

    for node in ast.parse("\n".join(lines)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for f in node.body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{f.name}", f


def equivalent_mutants() -> dict[str, str]:
    out = {}
    for line in EQUIVALENT.read_text().splitlines() if EQUIVALENT.is_file() else []:
        name, _, why = line.partition("#")
        if name.strip():
            out[name.strip()] = why.strip()
    return out


def module_of(mutant: str, modules: list[str]) -> str:
    """'reasonlab.llm_client.xǁLLMClientǁchat__mutmut_3' -> 'reasonlab/llm_client.py'."""
    for m in modules:
        if mutant.startswith(m.removesuffix(".py").replace("/", ".") + "."):
            return m
    return "?"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=REPO, help="tree whose code and tests are mutated/run")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="scratch folder to use and keep (default: a temporary one)")
    parser.add_argument("--report-only", action="store_true", help="summarize the finished run in --keep again")
    args = parser.parse_args()
    if args.report_only and not args.keep:
        parser.error("--report-only needs --keep DIR (a finished run)")

    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if not mutmut:
        print("mutmut is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    modules = list(config["only_mutate"])
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="reasonlab-mutation-"))
    work = scratch / "repo"
    source = args.source.resolve()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REASONLAB_HOME", "CI")}
    env.update(REASONLAB_TEST_PREFECT="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               REASONLAB_HOME=str(scratch / "home"), PYTHONDONTWRITEBYTECODE="1")
    if args.report_only:
        return report(mutmut, work, scratch, env, modules, source, wall=None)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in COPY:
        if (source / name).exists():
            shutil.copytree(source / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # this checkout's configuration; test files or tests the source tree lacks (an older commit) are left out
    def present(match: re.Match) -> str:
        path, _, test = match.group(1).partition("::")
        there = (source / path).is_file() and (not test or f"def {test}(" in (source / path).read_text())
        return match.group(0) if there else ""
    text = (REPO / "pyproject.toml").read_text()
    head, sep, tail = text.partition("pytest_add_cli_args_test_selection = [")
    listed, close, rest = tail.partition("]")
    (work / "pyproject.toml").write_text(head + sep + re.sub(r'"(tests/[^"]+)",\s*', present, listed) + close + rest)
    for module in modules:
        fence_off_non_core(work / module, CORE[module])

    start = time.perf_counter()
    run = subprocess.run([mutmut, "run", "--max-children", str(args.max_children)], cwd=work, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - start
    (scratch / "mutmut-run.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        print((run.stdout + run.stderr)[-4000:], file=sys.stderr)
        print(f"mutmut failed (exit {run.returncode}); log: {scratch / 'mutmut-run.log'}", file=sys.stderr)
        return 1
    return report(mutmut, work, scratch, env, modules, source, wall)


def report(mutmut: str, work: Path, scratch: Path, env: dict, modules: list[str], source: Path,
           wall: float | None) -> int:
    results = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True)
    status = dict(re.findall(r"^\s+(\S+): (.+)$", results.stdout, flags=re.M))
    if not status:
        print(f"mutmut found no mutants in {work}: {results.stderr[-2000:]}", file=sys.stderr)
        return 1

    equivalent = equivalent_mutants()
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: list[str] = []
    listed_but_killed = []  # a killed mutant is not equivalent, whatever the list says (a stale entry)
    for name, st in sorted(status.items()):
        mod = module_of(name, modules)
        if st in KILLED:
            by_module[mod]["killed"] += 1
            if name in equivalent:
                listed_but_killed.append(name)
        elif name in equivalent:
            by_module[mod]["equivalent"] += 1
        else:
            by_module[mod]["survived"] += 1
            survivors.append(f"{name}: {st}")
    names = [line.split(":")[0] for line in survivors]
    (scratch / "survivor-names.txt").write_text("\n".join(names) + "\n")
    diffs = subprocess.run([sys.executable, "-c", SHOW_DIFFS, str(scratch / "survivor-names.txt")], cwd=work, env=env,
                           capture_output=True, text=True)
    (scratch / "survivors.txt").write_text(diffs.stdout + diffs.stderr[-2000:])
    stale = sorted(set(equivalent) - set(status))
    for mod in modules:
        c = by_module[mod]
        total = c["killed"] + c["survived"]
        print(f"module={mod} mutants={total + c['equivalent']} killed={c['killed']} survived={c['survived']} "
              f"equivalent={c['equivalent']} score={c['killed'] / total if total else float('nan'):.3f}")
    for line in survivors:
        print(f"survivor={line}")
    if stale:
        print(f"equivalent_list_entries_not_found={len(stale)}")
    if listed_but_killed:
        print(f"equivalent_list_entries_killed={len(listed_but_killed)} (not equivalent: counted as killed)")
    killed = sum(c["killed"] for c in by_module.values())
    survived = sum(c["survived"] for c in by_module.values())
    equiv = sum(c["equivalent"] for c in by_module.values())
    print(f"source={source}")
    print(f"survivor_diffs={scratch / 'survivors.txt'}")
    if wall is not None:
        print(f"wall_s={wall:.0f}")
    print(f"mutants={killed + survived + equiv}")
    print(f"killed={killed}")
    print(f"survived={survived}")
    print(f"equivalent={equiv}")
    print(f"score={killed / (killed + survived):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
