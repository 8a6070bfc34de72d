"""Approaches (one row each): zero-shot programs and DSPy optimizers, from plain configs.

    APPROACHES = predict | cot | manual | bootstrap | random_search | mipro | simba
    check_approach("bootstrap", train_size=8, dev_size=4, demos=None)    # one clear error if it cannot run
    program = compile_program(approach, program_spec, trainset, devset, metric, demos, teacher_lm, options)
"""

from __future__ import annotations

from typing import Any, Callable

import dspy

from reasonlab.errors import ReasonlabError
from reasonlab.dspy_compile import programs

VERSION = "1"

# name -> what it needs: the smallest trainset, whether it needs a dev set, whether it compiles at all
APPROACHES: dict[str, dict[str, Any]] = {
    "predict": {"min_train": 0, "dev": False, "cot": False, "help": "zero-shot dspy.Predict"},
    "cot": {"min_train": 0, "dev": False, "cot": True, "help": "zero-shot dspy.ChainOfThought"},
    "manual": {"min_train": 0, "dev": False, "cot": True, "help": "hand-picked demos from a file (LabeledFewShot)"},
    "bootstrap": {"min_train": 2, "dev": False, "cot": True, "help": "BootstrapFewShot"},
    "random_search": {"min_train": 2, "dev": True, "cot": True, "help": "BootstrapFewShotWithRandomSearch"},
    "mipro": {"min_train": 2, "dev": True, "cot": True, "help": 'MIPROv2(auto="light")'},
    "simba": {"min_train": 0, "dev": False, "cot": True, "help": "SIMBA (min trainset = bsize)"},
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "manual": {},
    "bootstrap": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2, "max_rounds": 1},
    "random_search": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2, "num_candidate_programs": 2},
    "mipro": {"auto": "light", "max_bootstrapped_demos": 2, "max_labeled_demos": 2},
    "simba": {"bsize": 4, "num_candidates": 2, "max_steps": 2, "max_demos": 2},
}


def approach_config(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The optimizer's full config (defaults + options): part of the compile cache key."""
    if name not in APPROACHES:
        raise ReasonlabError(f"unknown optimizer/approach {name!r}: use one of {', '.join(APPROACHES)}")
    cfg = {**DEFAULTS.get(name, {}), **(options or {}).get(name, {})}
    unknown = set((options or {})) - set(APPROACHES)
    if unknown:
        raise ReasonlabError(f"optimizer options for unknown approach(es) {sorted(unknown)}: use {', '.join(APPROACHES)}")
    return {"approach": name, **cfg}


def check_approach(name: str, train_size: int, dev_size: int, demos: list | None,
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = approach_config(name, options)
    need = APPROACHES[name]
    min_train = cfg.get("bsize", 0) if name == "simba" else need["min_train"]
    if train_size < min_train:
        raise ReasonlabError(f"trainset too small for {name}: {train_size} examples, it needs at least {min_train} "
                             f"(raise train_size)")
    if need["dev"] and dev_size < 1:
        raise ReasonlabError(f"{name} scores candidate programs on a dev set: dev_size must be >= 1, got {dev_size}")
    if name == "manual" and not demos:
        raise ReasonlabError("the manual few-shot approach needs a demos file (demos=<path to a JSON/YAML list>)")
    return cfg


def metric_for(task: str) -> Callable:
    """DSPy metric: the headline score (a bool while bootstrapping, where `trace` is set)."""
    from reasonlab.dspy_compile.metrics import score

    def metric(example, prediction, trace=None, *args, **kwargs):
        value = score(task, example.answer, getattr(prediction, "answer", None))["score"]
        return value >= 1.0 if trace is not None else value

    metric.__name__ = f"{task}_metric"
    return metric


def compile_program(name: str, program_spec: dict[str, Any], trainset: list, devset: list, metric: Callable,
                    demos: list | None = None, teacher_lm=None, options: dict[str, Any] | None = None,
                    num_threads: int = 1, seed: int = 0) -> dspy.Module:
    """The approach's program: compiled by its optimizer with the LM in dspy.settings (the student)."""
    cfg = dict(approach_config(name, options))
    cfg.pop("approach")
    student = programs.build_program({**program_spec, "cot": APPROACHES[name]["cot"]})
    teacher_settings = {"lm": teacher_lm} if teacher_lm is not None else {}
    if name in ("predict", "cot"):
        return student
    if name == "manual":
        return dspy.LabeledFewShot(k=len(demos)).compile(student, trainset=demos, sample=False)
    if name == "bootstrap":
        opt = dspy.BootstrapFewShot(metric=metric, teacher_settings=teacher_settings, **cfg)
        return opt.compile(student, trainset=trainset)
    if name == "random_search":
        opt = dspy.BootstrapFewShotWithRandomSearch(metric=metric, teacher_settings=teacher_settings,
                                                    num_threads=num_threads, **cfg)
        return opt.compile(student, trainset=trainset, valset=devset)
    if name == "mipro":
        compile_kw = {k: cfg.pop(k) for k in list(cfg) if k in ("minibatch", "minibatch_size", "num_trials",
                                                                   "program_aware_proposer", "data_aware_proposer",
                                                                   "tip_aware_proposer", "fewshot_aware_proposer",
                                                                   "view_data_batch_size")}
        opt = dspy.MIPROv2(metric=metric, teacher_settings=teacher_settings, num_threads=num_threads, seed=seed,
                           prompt_model=teacher_lm, **cfg)
        compile_kw.setdefault("minibatch_size", max(1, min(35, len(devset))))
        return opt.compile(student, trainset=trainset, valset=devset, **compile_kw)
    if name == "simba":
        opt = dspy.SIMBA(metric=metric, num_threads=num_threads, **cfg)
        return opt.compile(student, trainset=trainset, seed=seed)
    raise ReasonlabError(f"unknown optimizer/approach {name!r}")


def demo_count(program: dspy.Module) -> int:
    return sum(len(getattr(p, "demos", []) or []) for _, p in program.named_predictors())
