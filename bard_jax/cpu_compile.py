"""Faster XLA compiles on CPU for runs made of many short-lived programs (the test suite, `minibard --smoke`).

XLA's CPU fusion emitters (its default code generator for fused loops) take about twice as long to compile this
project's programs as the older loop emitters they replaced: the Mini-BARD train step compiles in 11.4 s with them
and 4.8 s without, both with most optimizations off. jaxlib 0.12 no longer has the switch, and XLA aborts the process
on a flag it does not know, so the flag is tried in a child process before it is set.
"""

from __future__ import annotations

import os
import subprocess
import sys

LEGACY_CPU_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def use_fast_cpu_compiles() -> bool:
    """Add LEGACY_CPU_EMITTERS to XLA_FLAGS when this jaxlib accepts it; True when it is set (already or now).

    XLA_FLAGS is read when the backend starts: call this before anything touches a device. Programs compiled either
    way compute the same operations; only the code generator of fused loops differs."""
    flags = os.environ.get("XLA_FLAGS", "")
    if LEGACY_CPU_EMITTERS in flags:
        return True
    flags = f"{flags} {LEGACY_CPU_EMITTERS}".strip()
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"], capture_output=True,
                           env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})
    if probe.returncode == 0:
        os.environ["XLA_FLAGS"] = flags
    return probe.returncode == 0
