"""Which Keras layer a graph node came from, for error messages and reports only.

TensorFlow records no layer on an op; Keras opens a name scope per layer call, so a node's
scope components (``model/conv2d_1/Conv2D``, ``gradient_tape/model/conv2d_1/...``) name the
layer, with a ``_N`` suffix when TF made the scope unique. This is the one place tfpock reads
node names, and only to *explain*: no pass selects nodes or tensors this way.
"""
from __future__ import annotations

import re
from typing import Collection


def layer_of_node(node_name: str, layer_names: Collection[str]) -> str | None:
    """The innermost scope component of ``node_name`` that is a layer name, or None."""
    found = None
    for part in node_name.split("/")[:-1]:
        if part in layer_names:
            found = part
        else:
            base = re.sub(r"_\d+$", "", part)
            if base in layer_names:
                found = base
    return found
