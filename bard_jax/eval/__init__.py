"""Benchmark evaluation of BARD-VL checkpoints on the tasks and prompts of the release's lmms-eval setup.

`python -m bard_jax.eval run` decodes the paper's seven benchmarks (MMMU, MMMU-Pro, MME, RealWorldQA, MMStar,
AI2D, ChartQA) from local hub snapshots with the block-diffusion or the AR decoder and writes per-document samples,
results.json and the paper's table; `python -m bard_jax.eval score` re-scores a predictions file. Pieces: `tasks`
(what each benchmark reads and asks), `data` (parquet reading), `scoring` (per-task metrics), `runner` (the run
loop), `decode`, `prompts`, `samples`, `results`, `settings`. Nothing is imported here, so importing the package
costs nothing.
"""
