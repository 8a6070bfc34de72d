"""Concept SFT (the main job): prompts the model gets clearly wrong -> neuron attribution -> an intermediate concept -> SFT on texts that strengthen it -> the wrong->correct shift."""
