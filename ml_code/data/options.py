"""Options of the preprocessing job (``python -m ml_code.data.preprocess``), declared once;
the ``processed_splits`` asset's run config is built from :class:`PreprocessOptions`."""

from __future__ import annotations

from typing import Any, Optional

from ml_code.options import OptionsModel, option, parse_model

# Options that change how fast the job runs, not what it writes: left out of the content
# hash that decides whether existing splits can be reused.
RUNTIME_ONLY = frozenset({"num_workers"})


class PreprocessOptions(OptionsModel):
    """Every preprocessing option."""

    image_size: int = option(64, "square side in pixels (64-96 on CPU, 224 on GPU)", minimum=8, maximum=1024)
    val_fraction: float = option(0.15, "share of lesions in validation", minimum=0, maximum=1)
    test_fraction: float = option(0.15, "share of lesions in test", minimum=0, maximum=1)
    seed: int = option(42, "key of the lesion split's hash (dermaops-split-v1:seed=<seed>); "
                       "a new seed reassigns every lesion")
    num_workers: Optional[int] = option(None, "decoding processes; unset or 0: the CPU count", minimum=0)


DEFAULTS = PreprocessOptions()  # the job's defaults, for callers of preprocess.run that omit some


def parse_preprocess_options(values: dict[str, Any]) -> PreprocessOptions:
    """SM_HPS / ``--key value`` -> :class:`PreprocessOptions`; ValueError naming any unknown
    or invalid option."""
    return parse_model(PreprocessOptions, values, "preprocessing")


def output_options(opts: PreprocessOptions) -> dict[str, Any]:
    """The options that determine the job's output (what the asset hashes)."""
    return {k: v for k, v in opts.model_dump().items() if k not in RUNTIME_ONLY}
