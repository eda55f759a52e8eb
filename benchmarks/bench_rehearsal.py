"""A real-size rehearsal on this machine: the release's PBM and SWD recipes at the real 2B width, through the real
command lines, on real-resolution images written by the converter, with the dry run's prediction set against the
measured peak memory.

  python benchmarks/bench_rehearsal.py [--dir DIR] [--layers 2] [--vision-depth 2] [--steps 3] [--tokens 4096]
                                       [--max-pixels 1048576] [--samples 8] [--stages pbm,swd]

1. Data: a parquet in FineVision's schema (`images`, `texts`) with one photo-sized image per row (sizes from
   1024 x 768 to 2048 x 1536, drawn shapes over noise, JPEG) and a question with a long answer, turned into JSONL
   shards and image files by `python -m bard_jax.data.convert finevision`.
2. The source model: the 2B preset's widths (text hidden 2048, the real vocabulary of 151,936, the vision tower's
   1024) with `--layers` text layers and `--vision-depth` vision blocks (one deepstack tap), random weights, written
   as an HF directory with a word-level tokenizer (no download).
3. PBM: `recipes/pbm_b4.py` (BARD_SIZE=2b) from that source; SWD: `recipes/swd_b32.py` (BARD_SIZE=2b) whose student
   and teacher are the PBM stage's export. Both with one length bucket (`--tokens`), one response bucket (256), one
   patch bucket (the most rows an image of `--max-pixels` has), one image per sample and no video, so the run
   compiles exactly the program the dry run plans. A global batch of 2 samples on one CPU device (micro-batch 1,
   two accumulation steps).
4. Per stage: the dry run (`--dry-run` with the same overrides, one CPU device) gives the prediction; a straight run
   of `--steps` steps gives the measured peak (the process's peak resident set, `ru_maxrss`, minus that of a process
   that only imports the training code and starts the backend); a run stopped after step 1 (`stop_at_step`) and
   resumed must end with the same losses and weights (an exact resume).

Prints a JSON summary and the table for docs/training.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2**30
SIZES = ((1024, 768), (1280, 960), (1600, 1200), (2048, 1536))
WORDS = ("the a an image shows shape shapes circle square triangle red green blue yellow large small left right top "
         "bottom of in on and with is are there how many what where which color describe picture detail it near "
         "next to above below background foreground object objects one two three four five").split()


# ------------------------------------------------------------------------------------------------ data and model
def draw(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    from PIL import Image, ImageDraw

    w, h = size
    noise = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    img = Image.fromarray(noise).resize((w, h), Image.BILINEAR)
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = int(rng.integers(0, w - 200)), int(rng.integers(0, h - 200))
        r = int(rng.integers(40, 200))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x, y, x + r, y + r), fill=color)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(str(rng.choice(WORDS)) for _ in range(n))


def write_source_parquet(src: str, samples: int, seed: int = 0) -> None:
    """FineVision's layout and schema: SRC/<subset>/*.parquet with `images` [{bytes, path}] and `texts`
    [{user, assistant}]."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    rows = [{"images": [{"bytes": draw(rng, SIZES[i % len(SIZES)]), "path": None}],
             "texts": [{"user": "<image>\n" + sentence(rng, 20) + " ?", "assistant": sentence(rng, 150) + " ."}],
             "source": "rehearsal", "relevance_ratings": [5]} for i in range(samples)]
    schema = pa.schema([
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string())]))),
        ("source", pa.string()), ("relevance_ratings", pa.list_(pa.int64())),
    ])
    os.makedirs(os.path.join(src, "photos"), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema),
                   os.path.join(src, "photos", "train-00000-of-00001.parquet"), row_group_size=2)


def write_source_model(out: str, layers: int, vision_depth: int) -> None:
    """The 2B preset's widths with fewer layers, random weights, as an HF directory with a word-level tokenizer."""
    import dataclasses

    import jax

    from bard_jax.config import preset
    from bard_jax.data.synthetic import build_tokenizer
    from bard_jax.hf import export_hf
    from bard_jax.modeling import init_params

    tok_dir = out + ".tokenizer"
    build_tokenizer(tok_dir, list(dict.fromkeys(["user", "assistant", "system", "\n", "?", ".", "<image>", *WORDS,
                                                 "You", "helpful", "assistant."])))
    ids = json.load(open(os.path.join(tok_dir, "task.json")))["special_ids"]
    base = preset("2b")
    config = base.replace(
        text=dataclasses.replace(base.text, num_hidden_layers=layers),
        vision=dataclasses.replace(base.vision, depth=vision_depth, deepstack_visual_indexes=(0,)),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    params = jax.jit(lambda k: init_params(config, k, "bfloat16"))(jax.random.key(0))
    export_hf(params, config, None, out, side_files_from=tok_dir)


# ------------------------------------------------------------------------------------------------ measured runs
MEASURE = """
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:])
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, flush=True)
"""


def measured(cmd: list[str], env: dict, log: str) -> tuple[int, int, float, str]:
    """(exit status, peak resident bytes, seconds, standard output) of a command; its output is appended to `log`."""
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run([sys.executable, "-c", MEASURE, *cmd], stdout=subprocess.PIPE, stderr=f, env=env,
                           cwd=REPO, text=True)
        f.write(r.stdout)
    *out, last = r.stdout.strip().splitlines()
    status, peak = last.split()
    return int(status), int(peak), time.monotonic() - t0, "\n".join(out)


def import_baseline(env: dict, log: str) -> int:
    """The peak resident bytes of a process that imports the training code and starts the backend."""
    code = ("import jax, grain, orbax.checkpoint, transformers, bard_jax.train.loop, bard_jax.train.setup, "
            "bard_jax.train.dry_run; from transformers import AutoTokenizer; jax.devices(); "
            "jax.numpy.zeros(1).block_until_ready()")
    return measured([sys.executable, "-c", code], env, log)[1]


def train_cmd(recipe: str, workdir: str, overrides: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "bard_jax.train", "--recipe", os.path.join(REPO, "recipes", recipe),
            "--workdir", workdir, *overrides, *extra]


def read_rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def same_export(a: str, b: str) -> bool:
    from bard_jax import hf

    pa, pb = hf.load_converted(os.path.join(a, "export"), dtype=None)[0], hf.load_converted(
        os.path.join(b, "export"), dtype=None)[0]
    import jax

    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree_util.tree_leaves(pa),
                                                                          jax.tree_util.tree_leaves(pb)))


def stage(name: str, recipe: str, overrides: list[str], root: str, env: dict, baseline: int, steps: int,
          log: str) -> dict:
    """Dry run, straight run and stopped-then-resumed run of one stage."""
    status, _, dry_seconds, out = measured(train_cmd(recipe, os.path.join(root, f"{name}_dry"), overrides,
                                                     "--dry-run", "--device-memory", "1TiB"), env, log)
    assert status == 0, f"{name}: the dry run failed (see {log})"
    total = re.search(r"; total ([\d.]+) (GiB|MiB)", out)
    predicted = float(total.group(1)) * (GiB if total.group(2) == "GiB" else 2**20)
    parts_line = next(line for line in out.splitlines() if line.startswith("  per device: "))

    straight = os.path.join(root, name)
    status, peak, seconds, _ = measured(train_cmd(recipe, straight, overrides), env, log)
    assert status == 0, f"{name}: training failed (see {log})"
    rows = read_rows(straight)
    losses = [r["loss"] for r in rows]
    assert len(losses) == steps and np.isfinite(losses).all(), losses

    resumed = os.path.join(root, f"{name}_resumed")
    status, *_ = measured(train_cmd(recipe, resumed, overrides, "--recipe.stop_at_step=1"), env, log)
    assert status == 75, f"{name}: the stopped run exited {status} (see {log})"
    status, *_ = measured(train_cmd(recipe, resumed, overrides), env, log)
    assert status == 0, f"{name}: the resumed run failed (see {log})"
    exact = [r["loss"] for r in read_rows(resumed)] == losses and same_export(straight, resumed)
    # The rows' host peak is read at each step's check, before the final checkpoint is written: the training's own
    # peak. The process's peak also holds the save (on a CPU backend its host copy of the state is in the same RAM).
    training_peak = max(r["host_peak_gib"] for r in rows) * GiB
    return {"stage": name, "predicted_bytes": predicted, "plan_parts": parts_line.strip(),
            "training_peak_rss_bytes": training_peak, "process_peak_rss_bytes": peak, "import_rss_bytes": baseline,
            "measured_bytes": training_peak - baseline, "ratio": (training_peak - baseline) / predicted,
            "with_save_bytes": peak - baseline, "losses": losses,
            "step_seconds": [r["step_seconds"] for r in rows], "run_seconds": round(seconds, 1),
            "dry_run_seconds": round(dry_seconds, 1), "exact_resume": exact}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/bard_rehearsal")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vision-depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--max-pixels", type=int, default=1024 * 1024)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--stages", default="pbm,swd")
    args = parser.parse_args()
    root = os.path.abspath(args.dir)
    os.makedirs(root, exist_ok=True)
    log = os.path.join(root, "rehearsal.log")
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "BARD_SIZE": "2b"}

    src, data, source = (os.path.join(root, n) for n in ("parquet", "data", "source_model"))
    if not os.path.isdir(data):
        write_source_parquet(src, args.samples)
        status, *_ = measured([sys.executable, "-m", "bard_jax.data.convert", "finevision", "--src", src, "--out",
                               data], env, log)
        assert status == 0, f"the converter failed (see {log})"
    if not os.path.isdir(source):
        write_source_model(source, args.layers, args.vision_depth)
    rows = 4 * min(args.max_pixels // 32**2, args.tokens)  # one image: its most pixel rows
    common = [f"--recipe.data.train_jsonl={data}", f"--recipe.data.image_root={data}",
              f"--recipe.data.processor={source}", "--recipe.data.global_batch_size=2",
              f"--recipe.data.length_buckets={args.tokens}", "--recipe.data.response_buckets=256",
              f"--recipe.data.patch_buckets={rows}", "--recipe.data.max_images=1", "--recipe.data.max_videos=0",
              f"--recipe.data.max_pixels={args.max_pixels}", "--recipe.data.workers=0", "--recipe.data.strict=true",
              f"--recipe.steps={args.steps}", "--recipe.log_every=1", f"--recipe.ckpt_every={args.steps}",
              "--recipe.export_hf=false"]
    baseline = import_baseline(env, log)
    results = []
    if "pbm" in args.stages:
        results.append(stage("pbm", "pbm_b4.py", [*common, f"--recipe.model.init_from={source}"], root, env,
                             baseline, args.steps, log))
    if "swd" in args.stages:
        pbm = os.path.join(root, "pbm")
        results.append(stage("swd", "swd_b32.py", [*common, f"--recipe.model.init_from={pbm}",
                                                   f"--recipe.objective.teacher_init_from={pbm}"],
                             root, env, baseline, args.steps, log))
    print(json.dumps({"settings": vars(args), "results": results}, indent=1))
    print("| stage | predicted (dry run, 1 CPU device) | measured: peak RSS above the imports, training steps | "
          "measured / predicted | with the final checkpoint's save | seconds per step | losses | exact resume |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['stage']} | {r['predicted_bytes'] / GiB:.2f} GiB | {r['measured_bytes'] / GiB:.2f} GiB | "
              f"{r['ratio']:.2f} | {r['with_save_bytes'] / GiB:.2f} GiB | {np.mean(r['step_seconds']):.0f} | "
              f"{', '.join(f'{x:.3f}' for x in r['losses'])} | {'yes' if r['exact_resume'] else 'NO'} |")


if __name__ == "__main__":
    main()
