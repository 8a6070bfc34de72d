"""Three-stage training: continued pretraining -> SFT -> Bradley-Terry reward model (optional DPO).

One concept per module: `corpus` (domain text, packing, held-out split), `pretrain` (causal-LM stage),
`sft_pairs` (instruction/response pairs, loss on the response only), `preferences` (chosen/rejected pairs:
load, validate, dedupe, fit to a length), `reward_config` + `reward_model` (TRL RewardTrainer on a
sequence-classification head), `dpo` (optional stage 4), `metrics` (pure functions), `plots`.
"""
