"""The main job twice with the same parameters: the second run must be all Cached, with zero forwards.

    python bench/cached_rerun.py      # fresh REASONLAB_HOME (results, runs); offline models are reused

Prints key=value lines: wall time of each run, their ratio, task states, model forward passes. Exits 1 (after
printing them) when the premise fails: the second run not all Cached, or any forward pass in it.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("REASONLAB_MODEL_CACHE", str(Path.home() / ".cache" / "reasonlab" / "models"))
os.environ["REASONLAB_HOME"] = tempfile.mkdtemp(prefix="reasonlab-bench-")  # before tasks/ is imported

from flows.concept_sft import concept_sft  # noqa: E402
from reasonlab import models  # noqa: E402
from reasonlab.models import resolve_model  # noqa: E402
from tasks.run_info import flow_run_summary  # noqa: E402


def run_once():
    forwards = models.forward_passes()
    start = time.perf_counter()
    state = concept_sft(return_state=True)
    wall = time.perf_counter() - start
    state.result()
    states, _ = flow_run_summary(state.state_details.flow_run_id)
    return wall, states, models.forward_passes() - forwards


def main() -> None:
    resolve_model("smollm2-135m-instruct")  # materialize outside the timed runs
    first_s, first_states, first_fw = run_once()
    second_s, second_states, second_fw = run_once()
    print(f"tasks_first={len(first_states)}")
    print(f"tasks_second={len(second_states)}")
    print(f"first_states={','.join(sorted(set(first_states.values())))}")
    print(f"second_states={','.join(sorted(set(second_states.values())))}")
    print(f"all_cached_second={all(s == 'Cached' for s in second_states.values())}")
    print(f"forward_passes_first={first_fw}")
    print(f"forward_passes_second={second_fw}")
    print(f"first_run_s={first_s:.2f}")
    print(f"second_run_s={second_s:.2f}")
    print(f"second_over_first={second_s / first_s:.4f}")
    not_cached = sorted(name for name, s in second_states.items() if s != "Cached")
    if not second_states or not_cached or second_fw:
        print(f"FAILED: the second run must be all Cached with no forward pass; not cached: {not_cached or 'none'}"
              f"{'' if second_states else ' (no task ran at all)'}, forward passes: {second_fw}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
