"""The two files that describe a whole OUT: `convert.json` (what it is a conversion of) and `stats.json` (counts).

`convert.json` holds the source's name and every option that changes the output (image format, system text, the
row limit and, with a limit, the subsets it was spread over). Resuming is only sound with the same ones, so a run
whose manifest differs from OUT's stops with an error naming both, and deletes nothing; an OUT that is not empty
and has no manifest is refused too (it is not ours to write into). Converting more subsets of the same source into
one OUT, without a limit, is allowed: each shard's output does not depend on which others are converted.

`stats.json` is rebuilt at the end of every run from the per-shard counts of every finished shard in OUT (not only
this run's) and the failure records of the shards that failed. It holds no times or machine-specific values, and
it is rewritten only when its content changes, so a rerun over finished output changes no file.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

from bard_jax.data.convert.errors import ConvertError
from bard_jax.data.convert.output import STATE_DIR, json_bytes, jsonl_path, write_if_changed

MANIFEST = "convert.json"
STATS = "stats.json"
FORMAT_VERSION = 1  # bump when the records or file layout change for the same options
CONVERTER = "bard_jax.data.convert"


def manifest_of(source: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"converter": CONVERTER, "format_version": FORMAT_VERSION, "source": source, "options": options}


def _describe(manifest: dict[str, Any]) -> str:
    options = ", ".join(f"{k}={v!r}" for k, v in sorted((manifest.get("options") or {}).items()))
    return f"{manifest.get('source')!r} ({options}; format version {manifest.get('format_version')})"


def check_claim(out: str, wanted: dict[str, Any]) -> None:
    """Raise unless OUT is new, empty, or a conversion with exactly this manifest."""
    path = os.path.join(out, MANIFEST)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                found = json.load(f)
        except ValueError as e:
            raise ConvertError(f"{path} is not valid JSON ({e}); refusing to write into {out}") from e
        if found != wanted:
            raise ConvertError(f"{out} holds a conversion of {_describe(found)}, but this run asks for "
                               f"{_describe(wanted)}: use another --out, or remove {out} yourself to start over")
    elif os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConvertError(f"{out} exists and is not a conversion (no {MANIFEST}); refusing to write into it: "
                           f"choose a new or empty --out")


def write_manifest(out: str, manifest: dict[str, Any]) -> None:
    """Written before any shard (and left alone when it already says the same)."""
    os.makedirs(out, exist_ok=True)
    write_if_changed(os.path.join(out, MANIFEST), json_bytes(manifest))


def _state_files(out: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(shard name, content) of every .convert/<kind>/<name>.json, sorted by name."""
    root = os.path.join(out, STATE_DIR, kind)
    found = []
    for directory, _, files in os.walk(root):
        for file in files:
            if file.endswith(".json"):
                path = os.path.join(directory, file)
                name = os.path.relpath(path, root)[: -len(".json")].replace(os.sep, "/")
                try:
                    with open(path) as f:
                        found.append((name, json.load(f)))
                except (OSError, ValueError):
                    continue  # half-written by a killed run: that shard is redone anyway
    return sorted(found, key=lambda item: item[0])


def _empty_counts() -> dict[str, Any]:
    return {"shards": 0, "rows": 0, "kept": 0, "dropped": collections.Counter(), "images": 0, "videos": 0}


def collect_stats(out: str, source: str) -> dict[str, Any]:
    """stats.json's content: kept rows, dropped rows by reason, images and videos written, per record source tag
    ("finevision/<subset>") and in total; and the failed shards."""
    by_tag: dict[str, dict[str, Any]] = collections.defaultdict(_empty_counts)
    totals = _empty_counts()
    for name, counts in _state_files(out, "done"):
        if not os.path.isfile(jsonl_path(out, name)):
            continue  # being redone
        for bucket in (by_tag[counts["source"]], totals):
            bucket["shards"] += 1
            for key in ("rows", "kept", "images", "videos"):
                bucket[key] += counts[key]
            bucket["dropped"].update(counts["dropped"])
    for bucket in [*by_tag.values(), totals]:
        bucket["dropped"] = dict(sorted(bucket["dropped"].items()))
    failed = [{"shard": name, **record} for name, record in _state_files(out, "failed")]
    return {"source": source, "totals": totals, "by_source": dict(sorted(by_tag.items())), "failed_shards": failed}


def write_stats(out: str, stats: dict[str, Any]) -> None:
    write_if_changed(os.path.join(out, STATS), json_bytes(stats))
