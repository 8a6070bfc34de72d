"""Prefect tasks: each wraps one `reasonlab` unit of work once (cache policy, tags, retries, artifacts)."""
