"""The official scoring rules of the seven benchmarks the BARD-VL paper reports, as the release's vendored lmms-eval
applies them, and the embedded synthetic task's (`synthetic`: exact match per question type, for Mini-BARD).

One module per task. Each exposes `process(doc, prediction) -> record` (one JSON-serialisable dict per document; any
filter lmms-eval would apply to the raw generation -- letter extraction, lower-casing, number words -- happens
here, because the runner hands over only the model's post-processed answer) and `aggregate(records) -> metrics`
(lmms-eval's metric names and units; an empty list raises ValueError naming the task), plus `TASK`, `METRICS` and
`HIGHER_IS_BETTER`. The rules are written from the vendored task files, including their quirks, so that our numbers
are comparable with the release's; each module's docstring states its rule and any deviation.

Only the standard library is used.
"""

from __future__ import annotations

from types import ModuleType

from bard_jax.eval.scoring import ai2d, chartqa, mme, mmmu_pro_standard, mmmu_val, mmstar, realworldqa, synthetic

SCORERS: dict[str, ModuleType] = {
    "mme": mme,
    "ai2d": ai2d,
    "chartqa": chartqa,
    "mmstar": mmstar,
    "realworldqa": realworldqa,
    "mmmu_val": mmmu_val,
    "mmmu_pro_standard": mmmu_pro_standard,
    "synthetic": synthetic,  # the embedded task's held-out set (the Mini-BARD study)
}

__all__ = ["SCORERS"]
