"""Test settings shared by every test module.

Eight fake CPU devices (for sharding tests) must be requested before jax is imported anywhere, and parity tests
compare against transformers at float32 with the highest matmul precision.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# XLA compilation is most of this suite's time on a 2-core CPU: with most XLA optimizations off it runs in about
# 7 minutes instead of 9. Every comparison in it is between two paths compiled under the same setting, or against
# transformers at a float32 tolerance. Subprocesses (the CLI tests) inherit it. Set
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test fully optimized programs; the benchmarks always are.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# The same programs are compiled again and again: by tests that build the same tiny model, by both xdist workers, and
# by the CLI subprocesses (a training run, an export, an eval), each a fresh process. One persistent compilation
# cache for all of them compiles each program that takes 0.2 s or more to compile once per suite run. Its keys hold
# the program, the jax version and the XLA flags, so a stale entry is never used; it lives in .pytest_cache (delete
# it at will).
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# XLA's older CPU loop emitters compile about twice as fast as its default fusion emitters (bard_jax/cpu_compile.py):
# the suite took 8:52 with them against 11:22 without (cold cache, 2 cores). jaxlib 0.10 has them, 0.12 no longer;
# there the suite runs on the default emitters. Subprocesses inherit the flag. Set BARD_JAX_TEST_FUSION_EMITTERS=1 to
# test with the default emitters on any jaxlib.
if os.environ.get("BARD_JAX_TEST_FUSION_EMITTERS", "0") != "1":
    from bard_jax.cpu_compile import use_fast_cpu_compiles  # noqa: E402

    use_fast_cpu_compiles()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
