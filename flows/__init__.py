"""Prefect flows: each reads as its pipeline's list of stages.

Runs of this project send no analytics by default (many workers have no network, and each failed
heartbeat logged an ERROR): set PREFECT_SERVER_ANALYTICS_ENABLED=true to send them again.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # before any flow module imports prefect
# The default 20 s wait for the embedded server timed out on a 2-core machine shared with torch jobs
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
