"""Instruction retrieval on medical multiple-choice questions (the seed "Instruction Retrieval: Small Models,
Big Reasoning", measured on real models).

One concept per module: `questions` (seed / MedQA / MedMCQA / local files -> one question format),
`library` (the YAML instruction library, validated and hashed), `embedders` (sentence-transformers, with the
offline all-MiniLM-L6-v2; library embeddings cached by library hash + embedder), `bm25`, `fusion` (reciprocal-rank
fusion), `retrieve` (rank domains per question, retrieval accuracy), `conditions` (none / top-1 / top-k / oracle /
random-other instruction per question), `prompts` (lm-evaluation-harness prompt), `option_scoring` (acc from the
four letters in one forward, acc_norm over a shared prefix, cyclic-permutation debiasing), `metrics` (pure
functions: entropy, information gain, KL, Brier, ECE; accuracy, its intervals and McNemar from `reasonlab.stats`), `report` (tables),
`plots` (PNG files).
"""
