"""reasonlab: the units of work behind the lab's Prefect flows.

This package never imports Prefect: `tasks/` wraps its functions as cached Prefect tasks and
`flows/` chains those tasks into pipelines.
"""

__version__ = "0.1.0"
