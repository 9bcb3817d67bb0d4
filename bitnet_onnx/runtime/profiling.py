"""Time per layer of a compiled model, from onnxruntime's profiler, grouped by our layer names.

`profile(model_path, feeds)` runs the model once with profiling on (the bitnet ops registered,
onnxruntime's default graph optimizations, so the times are those of a normal run) and returns the
outputs and one `LayerTime` per layer. A profiled kernel is attributed to a layer:

1. by its node's name, when the model has a node of that name carrying `bitnet.layer` metadata
   (our ops and every node onnxruntime leaves as it is);
2. else by the longest such node name followed by "/" that starts the kernel's name: onnxruntime
   names a fused node after one of the nodes it replaces, e.g. `<node>/QuickGeluFusion/`;
3. else by the longest tensor name of the model that starts the kernel's name, through the node
   producing that tensor (onnxruntime names a node it re-lays out after the output it replaces,
   e.g. `<output>_nchwc`);
4. else it is counted under "(no layer)" with its op type (ops of no layer, and nodes onnxruntime
   made without a name to go by).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bitnet_onnx import runtime
from bitnet_onnx.core.errors import UnsupportedModelError
from bitnet_onnx.core.metadata import LAYER_KEY, LAYER_TYPE_KEY, OP_KEY

__all__ = ["NO_LAYER", "LayerTime", "layer_times", "profile"]

NO_LAYER = "(no layer)"
_KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class LayerTime:
    """Kernel time of one layer (or of the unattributed kernels of one op type) in one run."""

    layer: str
    layer_type: str
    op: str
    kernels: int
    micros: int


def _attribution(model: onnx.ModelProto) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
    """node name → (layer, layer type, op) for annotated nodes; tensor name → producing node name."""
    owners: dict[str, tuple[str, str, str]] = {}
    producers: dict[str, str] = {}
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        if LAYER_KEY in props:
            owners[node.name] = (props[LAYER_KEY], props.get(LAYER_TYPE_KEY, ""), props.get(OP_KEY, ""))
        for out in node.output:
            producers[out] = node.name
    return owners, producers


def layer_times(events: Iterable[Mapping[str, Any]], model: onnx.ModelProto) -> list[LayerTime]:
    """Kernel times of a profile's events grouped by layer (see the module docstring), slowest first."""
    owners, producers = _attribution(model)
    owners_by_length = sorted(owners, key=len, reverse=True)
    by_length = sorted(producers, key=len, reverse=True)
    totals: dict[tuple[str, str, str], list[int]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX):
            continue
        node = name[: -len(_KERNEL_SUFFIX)]
        op_type = str(event.get("args", {}).get("op_name", "?"))
        owner = owners.get(node)
        if owner is None:
            fused_from = next((n for n in owners_by_length if node.startswith(n + "/")), None)
            owner = owners.get(fused_from) if fused_from is not None else None
        if owner is None:
            tensor = next((t for t in by_length if node.startswith(t)), None)
            owner = owners.get(producers[tensor]) if tensor is not None else None
        key = owner if owner is not None else (NO_LAYER, "", op_type)
        entry = totals.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += int(event.get("dur", 0))
    rows = [
        LayerTime(layer, kind, op, count, micros) for (layer, kind, op), (count, micros) in totals.items()
    ]
    return sorted(rows, key=lambda r: (-r.micros, r.layer, r.op))


def profile(
    model_path: str | os.PathLike[str],
    feeds: Mapping[str, np.ndarray],
    threads: int | None = None,
    custom_op_libraries: Sequence[str | os.PathLike[str]] = (),
) -> tuple[dict[str, np.ndarray], list[LayerTime]]:
    """Run `model_path` once with the profiler (`custom_op_libraries` registered, see
    `runtime.session_options`); its outputs by name and its time per layer."""
    model = onnx.load(os.fspath(model_path), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="bitnet-onnx-profile-") as folder:
        options = runtime.session_options(threads, custom_op_libraries)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = runtime.session(model_path, options=options)
        runtime.check_feeds(session, feeds)
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, dict(feeds)), strict=True))
        trace = Path(session.end_profiling())
        try:
            events = json.loads(trace.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UnsupportedModelError(f"cannot read onnxruntime's profile {trace}: {exc}") from exc
    return outputs, layer_times(events, model)
