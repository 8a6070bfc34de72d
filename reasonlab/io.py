"""The one artifact/IO layer: atomic writes, content hashes, plain-data JSON/YAML/parquet, rows from a data file."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from reasonlab.errors import ReasonlabError


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success rename it onto `dest` (file or directory).

    Nothing half-written is ever visible at `dest`: an exception removes the temp path.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    target = tmp / dest.name
    try:
        yield target
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(target, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(dest: Path | str, text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_json(dest: Path | str, obj: Any) -> Path:
    return write_text(dest, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def parse_jsonl(text: str, where: Path | str) -> list[Any]:
    """One JSON value per non-blank line; a bad line is one error naming the file and the line."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ReasonlabError(f"{where}: line {n} is not JSON ({e.msg})") from None
    return rows


def read_jsonl(path: Path | str) -> list[Any]:
    return parse_jsonl(Path(path).read_text(encoding="utf-8"), path)


def write_parquet(dest: Path | str, rows: list[dict]) -> Path:
    import pandas as pd

    with atomic_path(dest) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
    return Path(dest)


def read_structured(path: Path | str) -> Any:
    """Parse a .json / .yaml / .yml file; a parse error names the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ReasonlabError(f"{path}: no such file")
    return _parse_document(path.read_text(encoding="utf-8"), path, yaml_text=path.suffix in (".yaml", ".yml"))


ROW_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".yaml", ".yml")


def read_rows(path: Path | str, under: tuple[str, ...] = (), values: bool = False) -> list[Any]:
    """The rows of a data file, by its suffix: a JSON list, JSON lines, parquet, CSV or a YAML list
    (any of the text ones may be gzipped: `.jsonl.gz`).

    A JSON/YAML document that is a mapping gives the list under the first of `under` it holds
    ({"data": [...]}), or with `values` its values ({id: row, ...}); anything else is one error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ReasonlabError(f"{path}: no such file")
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = next((s for s in ROW_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise ReasonlabError(f"{path}: not a rows file (the suffixes read are {', '.join(ROW_SUFFIXES)}, "
                             f"optionally .gz)")
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    if suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path, keep_default_na=False).to_dict("records")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if suffix == ".jsonl":
        return parse_jsonl(text, path)
    data = _parse_document(text, path, yaml_text=suffix in (".yaml", ".yml"))
    if isinstance(data, dict):
        key = next((k for k in under if isinstance(data.get(k), list)), None)
        data = data[key] if key else list(data.values()) if values else data
    if not isinstance(data, list):
        raise ReasonlabError(f"{path}: expected a list of rows"
                             + (f" (or a mapping with a list under {' / '.join(under)})" if under else ""))
    return data


def _parse_document(text: str, path: Path, yaml_text: bool) -> Any:
    try:
        return yaml.safe_load(text) if yaml_text else json.loads(text)
    except json.JSONDecodeError as e:
        raise ReasonlabError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except yaml.YAMLError as e:
        raise ReasonlabError(f"{path}: invalid YAML: {e}") from None


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tree_fingerprint(folder: Path | str) -> str:
    """sha256 over every file's relative name and content (hidden files skipped)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(str(rel).encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()
