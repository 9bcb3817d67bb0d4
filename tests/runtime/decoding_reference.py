"""The reference generate is checked against: greedy decoding that recomputes the whole sequence
from an empty cache at every step (onnxruntime on sample inputs at past length 0, numpy argmax)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from bitnet_onnx.runtime.sample_inputs import sample_inputs


def reference_logits(session: ort.InferenceSession, model: onnx.ModelProto, ids: list[int]) -> np.ndarray:
    """The last position's logits of the whole sequence `ids` run from an empty cache (sample
    inputs at past length 0: positions 0.., a mask of ones), no state carried from an earlier call."""
    feeds = sample_inputs(model, dims={"batch": 1, "past": 0, "seq": len(ids)})
    feeds["input_ids"] = np.asarray([ids], feeds["input_ids"].dtype)
    (logits,) = session.run(["logits"], feeds)
    return logits[0, -1]


def reference_greedy(
    session: ort.InferenceSession, model: onnx.ModelProto, prompt: list[int], n: int
) -> tuple[list[int], list]:
    ids, rows = list(prompt), []
    for _ in range(n):
        rows.append(reference_logits(session, model, ids))
        ids.append(int(np.argmax(rows[-1])))
    return ids[len(prompt) :], rows
