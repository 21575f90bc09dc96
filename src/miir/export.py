"""Export a trained model's scoring graph to ONNX, for serving without PyTorch.

The graph is ``score``: ``history`` (batch, history_len) int64 item ids, right-aligned, 0 =
padding -> ``scores`` (batch, n_items + 2) float32 next-item scores over item ids, with ids 0
and 1 (padding, unknown) at -inf. The batch size is dynamic; the history length is the
model's. Everything the model looks up (for MIIR, the item tables of every side field) is in
the graph as constants, so ``model.onnx`` needs nothing else. Beside it, ``items.json`` (the
item names in id order: the name of score column i is ``items[i]``) and ``export.json`` (model,
history length, opset, input and output names, checksums of every file and of the source
checkpoint, and the largest difference from PyTorch measured at export).

Which exporter: the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``). The
torch.export-based exporter (the default since torch 2.9, with onnxscript) stops at
:func:`~miir.models.batch.trim_left_padding`, which branches in Python on tensor values (it
cuts the columns a batch pads in every row); torch.export cannot guard on such data. The
tracer records the branch taken on the example, so the example holds a full row (no column
is cut) and a padded one (padding masks are built: BERT4Rec and NOVA skip theirs when no row
pads): the graph scores every row at full width, which gives the same scores (padding is
never attended and positions count from the right: the padding-invariance contract test),
only without the saving of the cut.

The export checks itself: onnxruntime scores a few histories (with padding, of every length)
and the export fails if any score differs from PyTorch's by more than ``TOLERANCE`` times
the largest score's magnitude (at least 1): float32 rounding grows with the scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from miir.atomic import atomic_json, replace_dir
from miir.errors import ConfigError, MiirError
from miir.models.base import SequenceModel
from miir.training.checkpoint import checkpoint_dir, load_checkpoint

OPSET = 17
INPUT = "history"
OUTPUT = "scores"
TOLERANCE = 1e-5
FORMATS = ("onnx",)
METADATA = "export.json"


class ExportError(MiirError):
    """The exported graph cannot be written or does not score as the model does."""


class ScoringGraph(nn.Module):
    """``model.score`` over the whole catalogue, as the one-input module the exporter traces."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: Tensor) -> Tensor:
        return self.model.score(history)  # (B, history_len) -> (B, N + 2)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def example_history(model: SequenceModel) -> Tensor:
    """The tracer's example, which fixes the branches a model takes on tensor values: a full
    row and a padded one (see the module docstring)."""
    ids = torch.arange(model.history_len) % model.n_items + 2  # (history_len,) real item ids
    rows = ids[None].repeat(2, 1)  # (2, history_len)
    rows[1, 0] = 0
    return rows


def check_histories(model: SequenceModel, seed: int = 0) -> Tensor:
    """(history_len, history_len) random histories: row r holds r + 1 items, right-aligned."""
    g = torch.Generator().manual_seed(seed)
    n = model.history_len
    items = torch.randint(2, model.n_items + 2, (n, n), generator=g)
    items[torch.arange(n)[None] < torch.arange(n - 1, -1, -1)[:, None]] = 0  # (n, n)
    return items


def _ort_compatible(proto: Any) -> None:
    """Make the graph runnable by onnxruntime's CPU kernels: its EyeLike has no bool kernel
    (MIIR's attention mask lets every token attend to itself with a bool identity), so a bool
    EyeLike is computed in int32 and cast back. Edits ``proto`` in place."""
    import onnx
    from onnx import TensorProto, helper

    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    nodes = []
    for node in proto.graph.node:
        if node.op_type != "EyeLike" or types.get(node.output[0]) != TensorProto.BOOL:
            nodes.append(node)
            continue
        src, dst = node.input[0], node.output[0]
        as_int, eye = f"{node.name}_int32_in", f"{node.name}_int32_out"
        nodes.append(helper.make_node("Cast", [src], [as_int], to=TensorProto.INT32))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name == "k"}
        nodes.append(helper.make_node("EyeLike", [as_int], [eye], dtype=TensorProto.INT32, **attrs))
        nodes.append(helper.make_node("Cast", [eye], [dst], to=TensorProto.BOOL))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    onnx.checker.check_model(proto)


def _infer_types(path: Path) -> Any:
    import onnx

    return onnx.shape_inference.infer_shapes(onnx.load(str(path)))


def export_onnx(model: SequenceModel, path: Path, opset: int = OPSET) -> None:
    """Trace ``model.score`` into ``path`` (dynamic batch) and make it onnxruntime-ready.
    The model is left in eval mode."""
    import onnx

    # The wrapper is put in eval mode itself: the exporter restores the mode it found on the
    # module it is given, and a wrapper left in training mode would switch the whole model
    # (dropout included) back to training after the export.
    graph = ScoringGraph(model).eval()
    with warnings.catch_warnings():
        # the tracer warns that trim_left_padding's branch is fixed by the example: intended
        # (see the module docstring), and the self-check below proves the scores
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # GRU graphs hold for any batch size here: the self-check scores another one
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        with torch.no_grad():
            torch.onnx.export(
                graph,
                (example_history(model),),
                str(path),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    proto = _infer_types(path)
    _ort_compatible(proto)
    onnx.save(proto, str(path))


def onnx_scores(path: Path, history: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Scores from onnxruntime: (B, history_len) int64 -> (B, N + 2) float32."""
    session = ort_session(path, threads)
    return session.run([OUTPUT], {INPUT: history.astype(np.int64)})[0]


def ort_session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_difference(model: SequenceModel, path: Path) -> tuple[float, float]:
    """The largest |onnxruntime - PyTorch| over :func:`check_histories` (the model in eval
    mode), and the largest |score| (float32 rounding grows with it); -inf must match."""
    model.eval()
    history = check_histories(model)
    with torch.no_grad():
        ref = model.score(history).float().numpy()  # (B, N + 2)
    got = onnx_scores(path, history.numpy())
    finite = np.isfinite(ref)
    if got.shape != ref.shape or not np.array_equal(np.isfinite(got), finite):
        raise ExportError(f"{path}: onnxruntime's scores have another shape or other -inf entries")
    return float(np.abs(got[finite] - ref[finite]).max()), float(np.abs(ref[finite]).max())


def export_run(run: str | Path, out: str | Path, fmt: str = "onnx") -> dict[str, Any]:
    """Export the best checkpoint of ``run`` to the folder ``out`` (written to a temporary
    folder, checked, then renamed; an existing export there is replaced, any other non-empty
    folder is refused). Returns the metadata written to ``export.json``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    run, out = Path(run), Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: a file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()) and not (out / METADATA).is_file():
        raise ConfigError(
            f"{out}: not empty and not an export (no {METADATA}); choose another --out"
        )
    best = checkpoint_dir(run)  # a run folder's best/, or a saved model's folder
    model, meta = load_checkpoint(best)
    names = model.catalogue.item_names
    if names is None or len(names) != model.n_items + 2:
        raise ConfigError(f"{best}: the checkpoint has no item names")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        export_onnx(model, tmp / "model.onnx")
        diff, scale = max_difference(model, tmp / "model.onnx")
        if diff > TOLERANCE * max(1.0, scale):
            raise ExportError(
                f"{run}: onnxruntime's scores differ from PyTorch's by {diff:.2e} "
                f"(> {TOLERANCE:g} x max(1, largest |score| {scale:.3g})); the export is not "
                "written"
            )
        (tmp / "items.json").write_text(json.dumps(names, ensure_ascii=False), encoding="utf-8")
        info = _metadata(model, meta, run, best, tmp, diff, scale)
        atomic_json(tmp / METADATA, info)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _metadata(
    model: SequenceModel,
    meta: dict[str, Any],
    run: Path,
    best: Path,
    folder: Path,
    diff: float,
    scale: float,
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {
        "format": "onnx",
        "model": meta.get("model"),
        "display_name": model.display_name(),
        "history_len": model.history_len,
        "n_items": model.n_items,
        "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=False), torch {torch.__version__}",
        "inputs": [{"name": INPUT, "dtype": "int64", "shape": ["batch", model.history_len]}],
        "outputs": [{"name": OUTPUT, "dtype": "float32", "shape": ["batch", model.n_items + 2]}],
        "convention": "history right-aligned, 0 = padding; scores over item ids, ids 0 and 1 "
        "at -inf; items.json names each id",
        "checksums": {name: _sha256(folder / name) for name in ("model.onnx", "items.json")},
        "source": {
            "run": str(run.resolve()),
            "checkpoint_sha256": _sha256(best / "model.safetensors"),
            "epoch": meta.get("epoch"),
        },
        "check": {
            "max_abs_diff": diff,
            "max_abs_score": scale,
            "tolerance": f"{TOLERANCE:g} x max(1, max_abs_score)",
            "histories": model.history_len,
        },
        "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
