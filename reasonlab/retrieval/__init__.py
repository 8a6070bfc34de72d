"""Instruction retrieval on medical multiple-choice questions, measured on real models (see README.md here).

One concept per module: `params` (the flow's parameter groups), `questions` (notebook examples / MedQA / MedMCQA /
local files -> one question format), `library` (the YAML instruction library, validated and hashed), `embedders`
(sentence-transformers, with the offline all-MiniLM-L6-v2), `bm25`, `fusion` (reciprocal-rank fusion, ties by
name), `retrieve` (rank domains per question, retrieval accuracy), `conditions` (none / top-1 / top-k / oracle /
random-other instruction per question), `prompts` (lm-evaluation-harness prompt), `option_scoring` (acc from the
letters in one forward, acc_option_text_norm over a shared prefix, cyclic-permutation debiasing), `metrics`
(entropy, information gain, KL, Brier, ECE), `report` (figures and tables), `experiment` (a run's sets, key,
folders, result), `plots` (PNG files), `sweep_metrics` (what a sweep compares).
"""
