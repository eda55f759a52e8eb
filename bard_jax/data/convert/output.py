"""Where a converted shard goes in OUT, and how it is written so that an interrupted conversion can resume.

Layout (a shard's name is "<subset>/<file stem>", or the stem for sources without subsets):

    OUT/<name>.jsonl                           the shard's records, one JSON object a line
    OUT/images/<name>/<row:08d>_<k>.jpg        image k of source row `row` (.png with --image-format png)
    OUT/videos/<name>/<row:08d>_<k><ext>       video k of the row, copied (hf_arrow)
    OUT/.convert/done/<name>.json              the shard's counts: written just before the commit
    OUT/.convert/failed/<name>.json            why the shard failed, until a rerun converts it

File names come from the row's position in its shard, never from its id (ids repeat across subsets and may hold
any character), so a redo writes the same names.

Commit protocol: records go to `<name>.jsonl.partial`; images and videos are written to a temporary name and
renamed. When the shard is complete its counts are written, then the partial file is renamed to `<name>.jsonl`:
that rename is the commit point. A shard is finished when its .jsonl and its counts both exist; anything else is
redone from scratch, after removing its partial file and its own image and video folders (which only it writes),
so nothing is duplicated and the redone output is byte for byte what an uninterrupted run writes. Finished shards
are never opened for writing again, so their files keep their modification times (the training data index is
keyed on them).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from typing import Any

from PIL import Image

from bard_jax.atomic_file import atomic_file, atomic_write
from bard_jax.data.convert.conversation import Sample

IMAGE_FORMATS = {"jpeg": ("jpg", {"format": "JPEG", "quality": 95, "optimize": True}),  # the release's setting
                 "png": ("png", {"format": "PNG"})}
STATE_DIR = ".convert"
PARTIAL = ".partial"
TMP = ".tmp"


def jsonl_path(out: str, name: str) -> str:
    return os.path.join(out, name + ".jsonl")


def done_path(out: str, name: str) -> str:
    return os.path.join(out, STATE_DIR, "done", name + ".json")


def failed_path(out: str, name: str) -> str:
    return os.path.join(out, STATE_DIR, "failed", name + ".json")


def write_atomically(path: str, data: bytes) -> None:
    atomic_write(path, data, tmp=path + TMP)  # a fixed temporary name: a killed run's leftover is known


def write_if_changed(path: str, data: bytes) -> None:
    """Leave the file (and its modification time) alone when it already holds `data`."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except OSError:
        pass
    write_atomically(path, data)


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def finished_counts(out: str, name: str, source_bytes: int) -> dict[str, Any] | None:
    """The counts of a finished shard (converted from a source file of this size), else None."""
    if not os.path.isfile(jsonl_path(out, name)):
        return None
    try:
        with open(done_path(out, name)) as f:
            counts = json.load(f)
    except (OSError, ValueError):
        return None
    return counts if counts.get("source_bytes") == source_bytes else None


class ShardWriter:
    """Writes one shard's records and files; `commit()` makes it finished, `abort()` removes what it wrote."""

    def __init__(self, out: str, name: str, image_format: str):
        self.out, self.name = out, name
        self.ext, self.save_args = IMAGE_FORMATS[image_format]
        self.final = jsonl_path(out, name)
        self.partial = self.final + PARTIAL
        self.image_dir = os.path.join(out, "images", name)
        self.video_dir = os.path.join(out, "videos", name)
        self._clear()
        os.makedirs(os.path.dirname(self.final), exist_ok=True)
        self.file = open(self.partial, "w", encoding="utf-8")
        self.rows = self.kept = self.images = self.videos = 0
        self.dropped: collections.Counter[str] = collections.Counter()

    def _clear(self) -> None:
        for folder in (self.image_dir, self.video_dir):
            shutil.rmtree(folder, ignore_errors=True)
        for path in (self.partial, self.final, done_path(self.out, self.name)):
            if os.path.exists(path):
                os.unlink(path)

    def _save_image(self, image: Image.Image, row: int, k: int) -> str:
        rel = f"images/{self.name}/{row:08d}_{k}.{self.ext}"
        path = os.path.join(self.out, rel)
        with atomic_file(path, tmp=path + TMP) as f:
            image.save(f, **self.save_args)
        self.images += 1
        return rel

    def _copy_video(self, source: str, row: int, k: int) -> str:
        rel = f"videos/{self.name}/{row:08d}_{k}{os.path.splitext(source)[1].lower()}"
        path = os.path.join(self.out, rel)
        with atomic_file(path, tmp=path + TMP) as f, open(source, "rb") as src:
            shutil.copyfileobj(src, f)
        self.videos += 1
        return rel

    def add(self, sample: Sample, row: int, source_tag: str) -> None:
        """Write a kept row: its images and videos under their names, then its record line."""
        n_images = n_videos = 0
        messages = []
        for m in sample.messages:
            content = m["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image":
                        part = {**part, "image": self._save_image(part["image"], row, n_images)}
                        n_images += 1
                    elif part.get("type") == "video":
                        part = {**part, "video": self._copy_video(part["video"], row, n_videos)}
                        n_videos += 1
                    parts.append(part)
                content = parts
            messages.append({**m, "content": content})
        record = {"messages": messages, "id": sample.id, "source": source_tag}
        try:
            line = json.dumps(record, ensure_ascii=False) + "\n"
            self.file.write(line)
        except UnicodeEncodeError:  # a lone surrogate from a JSON source: keep it escaped, as JSON allows
            self.file.write(json.dumps(record) + "\n")
        self.rows += 1
        self.kept += 1

    def drop(self, reason: str) -> None:
        self.rows += 1
        self.dropped[reason] += 1

    def commit(self, counts: dict[str, Any]) -> dict[str, Any]:
        """Finish the shard: its counts (`counts` plus what was written), then the rename that commits it."""
        self.file.close()
        counts = {**counts, "rows": self.rows, "kept": self.kept, "dropped": dict(sorted(self.dropped.items())),
                  "images": self.images, "videos": self.videos}
        write_atomically(done_path(self.out, self.name), json_bytes(counts))
        os.replace(self.partial, self.final)
        return counts

    def abort(self) -> None:
        self.file.close()
        self._clear()
