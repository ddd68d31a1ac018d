"""Graph passes on a PT2E-converted (quantize/dequantize) module before it is lowered to XNNPACK.

XNNPACK's static reshape (what ``view``, ``flatten``, ``squeeze`` and ``unsqueeze`` become)
keeps one int8 encoding from input to output: an int8 input with one scale and zero point and an
int8 output with another is rejected when the runtime loads the program ("Failed to create squeeze
node N with code: xnn_status_invalid_parameter"), after the export has done all its work. PT2E
produces that pattern whenever a reshape sits between two differently observed tensors: in
diffusers' FluxTransformer2DModel joint attention, ``attn.to_v(x).view(B, -1, heads, dim)`` is
dequantized with ``to_v``'s output scale and requantized with the scale the ``torch.cat`` of image
and text values shares across its inputs. ``requantize_before_reshapes`` moves the change of scale
in front of the reshape (``dq_A -> q_B -> dq_B -> view -> q_B``), which computes the same numbers
(rounding commutes with a reshape) and leaves XNNPACK a reshape with one encoding.
"""

from __future__ import annotations

from typing import Any

import torch

# aten ops that only move or relabel elements; XNNPACK lowers them to a static reshape or transpose.
_SHAPE_OPS = frozenset({"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze",
                        "permute", "transpose", "t"})


def _op_name(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _is(node: Any, name: str) -> bool:
    return (isinstance(node, torch.fx.Node) and node.op == "call_function"
            and str(node.target).startswith(f"quantized_decomposed.{name}.")
            and "per_tensor" in str(node.target))


def requantize_before_reshapes(gm: torch.fx.GraphModule) -> list[str]:
    """Give each shape-only op between two different int8 encodings one encoding on both sides.

    For ``dequantize(x, A) -> reshape -> quantize(B)`` with A != B (all of the reshape's users
    quantizing with B), a ``quantize(B) -> dequantize(B)`` pair is inserted on the reshape's input.

    Returns:
        The ops rewritten, as ``<node> in <module path>``.
    """
    changed: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or _op_name(node) not in _SHAPE_OPS or not node.args:
            continue
        src, users = node.args[0], list(node.users)
        if not _is(src, "dequantize_per_tensor") or not users or not all(_is(u, "quantize_per_tensor") for u in users):
            continue
        params = {tuple(u.args[1:]) for u in users}
        if len(params) != 1 or tuple(src.args[1:]) == next(iter(params)):
            continue  # mixed encodings downstream cannot be met by one; equal ones need nothing
        out_params = users[0].args[1:]
        with gm.graph.inserting_before(node):
            q = gm.graph.call_function(users[0].target, (src, *out_params))
            dq = gm.graph.call_function(src.target, (q, *out_params))
        for new in (q, dq):
            new.meta = {k: v for k, v in src.meta.items() if k in ("nn_module_stack", "stack_trace", "source_fn_stack")}
            if "val" in src.meta:
                new.meta["val"] = src.meta["val"] if new is dq else src.meta["val"].to(out_params[-1])
        node.replace_input_with(src, dq)
        stack = node.meta.get("nn_module_stack") or {}
        path = next(reversed(stack.values()))[0] if stack else ""
        changed.append(f"{node.name} in {path}" if path else f"{node.name} in the top-level module")
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed
