"""Γ and Φ on ONNX Runtime, in the shape `models.scio_search` asks for (torch-free).

Γ is two graphs: `scio_gamma_context` (h1, h2, features, group -> ctx0, ctx1, ...) runs once per
(person, group); `scio_gamma_head` (candidates, ctx_index, ctx0, ... -> heatmap) runs once per
search iteration for every candidate, gathering its context row inside the graph. Φ is one graph
(h1, h2, h3, features, group -> heatmap). Heatmaps go in and out as (M, h, w).

When both Γ graphs run with IO binding (CUDA), the context stays on the device between the
context call and the search iterations that read it.

Graphs exported since stop 34 (or rewritten by `scio-pose rebundle --person-features`) take each
person's feature map once, `features` (P, C, h, w), with `person_index` (M,) naming each row's
person; the graph gathers the rows itself after its 1x1 convolution over them. Older graphs take
one feature map per row. `_feature_feeds` gives each what it reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from models.scio_search import PERSON_INDEX, RowFeatures
from service.runtime import OnnxModel

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def _maps(x: npt.NDArray[np.floating]) -> F32:
    return np.ascontiguousarray(x[:, None], dtype=np.float32)  # (M, h, w) -> (M, 1, h, w)


def _feature_feeds(model: OnnxModel, f: F32 | RowFeatures) -> dict[str, Any]:
    """The feature inputs of a Φ / Γ-context graph for M rows: per person with their index
    where the graph takes `person_index`, else one map per row."""
    if PERSON_INDEX not in model.input_names:
        rows = f.rows() if isinstance(f, RowFeatures) else f
        return {"features": np.ascontiguousarray(rows, dtype=np.float32)}
    if isinstance(f, RowFeatures):
        persons, index = f.persons, f.index
    else:
        persons, index = f, np.arange(len(f))
    return {
        "features": np.ascontiguousarray(persons, dtype=np.float32),
        PERSON_INDEX: np.ascontiguousarray(index, dtype=np.int64),
    }


class OnnxVerifier:
    def __init__(self, context: OnnxModel, head: OnnxModel) -> None:
        self.context_model = context
        self.head_model = head
        self.ctx_names = [n for n in head.input_names if n.startswith("ctx") and n != "ctx_index"]
        if self.ctx_names != context.output_names:
            raise ValueError(
                f"Γ's graphs do not fit together: context outputs {context.output_names}, "
                f"head takes {self.ctx_names}"
            )
        self.context_on_device = context.io_binding and head.io_binding

    def context(self, hb: F32, hc: F32, f: F32 | RowFeatures, group: I64) -> list[Any]:
        """ctx0, ctx1, ...: host arrays, or `OrtValue`s on the device under IO binding."""
        run = self.context_model.run_on_device if self.context_on_device else self.context_model.run
        out: dict[str, Any] = run(
            h1=_maps(hb),
            h2=_maps(hc),
            group=np.ascontiguousarray(group, dtype=np.int64),
            **_feature_feeds(self.context_model, f),
        )
        return [out[n] for n in self.ctx_names]

    def head(self, context: list[Any], index: I64, hd: F32) -> F32:
        feeds = dict(zip(self.ctx_names, context, strict=True))
        out = self.head_model.run(
            candidates=_maps(hd), ctx_index=np.ascontiguousarray(index, dtype=np.int64), **feeds
        )
        return out["heatmap"][:, 0]


class OnnxPredictor:
    def __init__(self, model: OnnxModel) -> None:
        self.model = model

    def __call__(self, ha: F32, hb: F32, hc: F32, f: F32 | RowFeatures, group: I64) -> F32:
        out = self.model.run(
            h1=_maps(hb),
            h2=_maps(hc),
            h3=_maps(ha),
            group=np.ascontiguousarray(group, dtype=np.int64),
            **_feature_feeds(self.model, f),
        )
        return out["heatmap"][:, 0]
