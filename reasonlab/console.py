"""A quiet console: a run prints its stages and its results, not the libraries' progress bars and deprecation
warnings. `REASONLAB_VERBOSE=1` (the flows' `--verbose`) brings them back. The Prefect progress artifacts stay."""

from __future__ import annotations

import logging
import os
import warnings

NOISY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "trl", "peft", "sentence_transformers")


def verbose() -> bool:
    return os.environ.get("REASONLAB_VERBOSE", "") not in ("", "0", "false")


def configure(loud: bool | None = None) -> None:
    """Silence (or, when loud, restore) the libraries' progress bars, info logs and deprecation warnings."""
    loud = verbose() if loud is None else loud
    import datasets
    import transformers

    for name, value in (("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error")):
        if loud:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if loud:
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if loud else logging.ERROR)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("default" if loud else "ignore", category=category)
