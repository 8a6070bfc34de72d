"""Prefect flows: each reads as its pipeline's list of stages."""
