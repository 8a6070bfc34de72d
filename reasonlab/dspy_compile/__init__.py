"""DSPy compile: small models + DSPy optimization measured against a reference model, with cost (GSM8K, HotPotQA)."""
