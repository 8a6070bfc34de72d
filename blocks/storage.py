"""`StorageLocation`: where every worker reads and writes reasonlab's files and Prefect's cached results.

    StorageLocation(home="/mnt/shared/reasonlab").save("default")
    StorageLocation(home="/mnt/shared/reasonlab", result_storage="remote-file-system/minio").save("default")

`home` becomes `REASONLAB_HOME` of every flow run (runs/, models/, and results/ unless `result_storage`
names a Prefect filesystem block for task results and cache records). `deployments.setup` saves one
named "default" (a local dir by default) and copies its `env()` into the work pools' job variables.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

RESULT_STORAGE_ENV = "REASONLAB_RESULT_STORAGE"  # read by tasks/conventions.py at import


class StorageLocation(Block):
    _block_type_name = "Reasonlab Storage"
    _block_type_slug = "reasonlab-storage"
    _description = "Shared root of reasonlab's runs and cached task results, readable by every worker."

    home: str = Field(..., description="REASONLAB_HOME for every flow run: a directory all workers mount")
    result_storage: str | None = Field(
        None, description="slug of a Prefect filesystem block for task results (e.g. local-file-system/reasonlab-results);"
                          " empty: HOME/results")
    model_cache: str | None = Field(None, description="REASONLAB_MODEL_CACHE (materialized offline models); empty: HOME/models")

    def env(self) -> dict[str, str]:
        """The environment a flow run needs to use this location (for work pool job variables)."""
        env = {"REASONLAB_HOME": self.home}
        if self.result_storage:
            env[RESULT_STORAGE_ENV] = self.result_storage
        if self.model_cache:
            env["REASONLAB_MODEL_CACHE"] = self.model_cache
        return env
