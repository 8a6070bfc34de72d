"""Orchestration set-up and sweep definitions (see deployments/README.md)."""
