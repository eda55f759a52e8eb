"""Convert the public training sets into our training format: sharded JSONL chat records plus image files.

    python -m bard_jax.data.convert {finevision,llava_ov15,mmfinereason,hf_arrow} --src DIR --out DIR
        [--subsets a,b] [--workers N] [--limit N] [--system TEXT] [--image-format jpeg|png] [--image-root DIR]

The release converted each source with its own script into one JSON file per subset, holding everything in memory
and writing images named by row id. Here every source goes through one streaming converter, so the hub's parquet
files (many GB of embedded images) are read a few rows at a time, work is parallel per file, and an interrupted
conversion resumes where it stopped. Each record is one line:

    {"messages": [{"role": "system", "content": "You are a helpful assistant"},
                  {"role": "user", "content": [{"type": "image", "image": "images/<subset>/<shard>/00000012_0.jpg"},
                                               {"type": "text", "text": "..."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "..."}]}],
     "id": "...", "source": "finevision/<subset>"}

Image paths are relative to OUT: train with `data.image_root=OUT`. The conversation rules shared by all sources
(system message, images at the front of the first user turn, `<image>` tags removed, which rows are dropped and
why) are in `conversation`; the sources' columns in `finevision`, `llava_ov15`, `mmfinereason` and `hf_arrow`; the
output layout and the resume protocol in `output`; `convert.json` and `stats.json` in `manifest`.
"""

from bard_jax.data.convert.errors import ConvertError
from bard_jax.data.convert.plan import SOURCES
from bard_jax.data.convert.run import convert

__all__ = ["SOURCES", "ConvertError", "convert"]
