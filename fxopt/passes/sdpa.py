"""``sdpa``: hand-written attention becomes one ``F.scaled_dot_product_attention`` call (lossless).

The chain eager attention code writes (transformers' ``eager_attention_forward``, timm and torchvision blocks
with their fused path off)::

    scores = q @ k.transpose(-2, -1)          # q or k may be scaled by a constant first
    scores = scores * scale                   # or / sqrt(d): any number of constant factors
    scores = scores + mask                    # additive masks, or one scores.masked_fill(mask, -inf)
    weights = softmax(scores, dim=-1)         # possibly in float32 (dtype=, .float()), then cast back
    weights = dropout(weights, p, training)   # inactive: eval mode or p == 0
    out = weights @ v

becomes ``scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=<product of the factors>)``. On GPUs SDPA
runs as one flash or memory-efficient kernel that never writes the (L, S) weights to memory. The two products may
also be einsums over one batch prefix, ``"bhid,bhjd->bhij"`` and ``"bhij,bhjd->bhid"`` (torchvision's MaxViT).

The chain is declared as ``Link``s (which ops it may pass through, and what each contributes); the cases where
the rewrite must not fire are the checks next to it, each recorded as a ``Skip`` with its reason: the weights
are read elsewhere (returned attention weights), the softmax is over another dim, a scale is a tensor rather than
a constant, a mask would broadcast the scores to a larger shape, dropout is active in training mode, dtypes
differ. Casts and copies in the chain (``.to``, ``.float()``, ``.contiguous()``) are dropped: q, k, v and the
output must share one dtype, so what the casts did is a float32 softmax, which SDPA's kernels do internally.

A ``masked_fill(mask, value)`` with ``value`` -inf or below ``FILL_LIMIT`` becomes the boolean mask ``~mask``.
That is exact for every query that keeps at least one key; a row whose keys are all masked differs (the
hand-written form averages the values there, or gives NaN for -inf, where SDPA gives zeros).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxopt.ops.forms import aten_ops, methods
from fxopt.ops.view import OpView
from fxopt.passes.base import Pass, PassContext, PassResult, register_pass
from fxopt.passes.editor import GraphEditor
from fxopt.passes.match import call_kwargs, fire, live_calls, op_of, view_of

aten = torch.ops.aten

FILL_LIMIT = -1e4
"""A ``masked_fill`` value at or below this (or -inf) masks a key out: exp of it underflows to 0 in every dtype."""

MAX_LINKS = 8
"""Links the chain may have between the scores matmul and the softmax, and between the softmax and the output."""


@dataclass(frozen=True)
class Piece:
    """What one link contributes to the SDPA call.

    Attributes:
        scale: factor on the scores.
        mask: an additive mask node.
        masked_out: the boolean mask of a ``masked_fill`` (True: the key is masked out).
    """

    scale: float = 1.0
    mask: fx.Node | None = None
    masked_out: fx.Node | None = None


Read = Callable[[OpView, fx.Node, fx.GraphModule], "Piece | str"]


@dataclass(frozen=True)
class Link:
    """One kind of op the attention chain may pass through.

    Attributes:
        name: the link's role ("scale", "mask", "fill", "cast", "dropout").
        kinds: OpView kinds it matches (when ``ops`` is empty).
        ops: op objects it matches (``op_of``); when given, they decide alone.
        operands: positions of the tensor inputs the chain may run through.
        read: ``(view, chain operand, gm) -> Piece``, or the reason the op stops the rewrite.
    """

    name: str
    kinds: frozenset[str]
    ops: frozenset[Any]
    operands: tuple[int, ...]
    read: Read

    def matches(self, view: OpView, gm: fx.GraphModule) -> bool:
        """Whether ``view`` is an op of this link."""
        return op_of(view.node, gm) in self.ops if self.ops else view.kind in self.kinds

    def chain_operands(self, view: OpView) -> list[fx.Node]:
        """The input nodes the chain may come through, in order of preference."""
        refs = [view.inputs[i] for i in self.operands if i < len(view.inputs)]
        return [r.node for r in refs if r is not None and r.node is not None]


def _other(view: OpView, chain: fx.Node) -> tuple[Any, bool]:
    """The operand of a binary op that is not ``chain`` (a node or a number), and whether ``chain`` is first."""
    a, b = view.inputs[0], view.inputs[1]
    if a is not None and a.node is chain:
        return (b.node if b is not None else view.attrs.get("scalar_other")), True
    return (a.node if a is not None else view.attrs.get("scalar_input")), False


def _read_scale(view: OpView, chain: fx.Node, gm: fx.GraphModule) -> Piece | str:
    other, first = _other(view, chain)
    name = view.node.name
    if isinstance(other, fx.Node):
        what = "a tensor" if isinstance(other.meta.get("val"), torch.Tensor) else "a number (from sizes?)"
        return f"{name} scales the scores by {other.name}, {what} computed by the graph, not a constant"
    if isinstance(other, bool) or not isinstance(other, (int, float)) or not math.isfinite(other) or other == 0:
        return f"{name} scales the scores by {other!r}, not a finite non-zero constant"
    if view.kind == "div":
        return Piece(scale=1.0 / other) if first else f"{name} divides a constant by the scores"
    return Piece(scale=float(other))


def _read_add(view: OpView, chain: fx.Node, gm: fx.GraphModule) -> Piece | str:
    other, _ = _other(view, chain)
    if view.attrs.get("alpha", 1) != 1:
        return f"{view.node.name} adds the mask with alpha={view.attrs['alpha']}"
    if not isinstance(other, fx.Node):
        return f"{view.node.name} adds the constant {other!r} to the scores, not a mask tensor"
    return Piece(mask=other)


def _read_fill(view: OpView, chain: fx.Node, gm: fx.GraphModule) -> Piece | str:
    value, mask = view.attrs.get("value"), view.inputs[1]
    name = view.node.name
    if mask is None or mask.node is None or _dtype(mask.node) != torch.bool:
        return f"{name} fills where a non-boolean mask is set"
    if not isinstance(value, (int, float)) or not (value == -math.inf or value <= FILL_LIMIT):
        return f"{name} fills masked scores with {value!r}, not -inf or a value <= {FILL_LIMIT:g}"
    return Piece(masked_out=mask.node)


def _read_pass_through(view: OpView, chain: fx.Node, gm: fx.GraphModule) -> Piece | str:
    return Piece()


def _read_dropout(view: OpView, chain: fx.Node, gm: fx.GraphModule) -> Piece | str:
    if view.node.op == "call_module":
        module = gm.get_submodule(str(view.node.target))
        p, training = float(getattr(module, "p", 0.0)), module.training
    else:
        kw = call_kwargs(view.node) or {}
        p, training = float(kw.get("p", 0.5)), bool(kw.get("training", kw.get("train", True)))
    if p > 0 and training:
        return (f"{view.node.name} drops attention weights with p={p:g} in training mode (SDPA draws other random "
                "numbers); put the model in eval() or set the dropout to 0")
    return Piece()


def _last_two_swapped(view: OpView) -> bool:
    perm = list(view.attrs.get("perm", ()))
    n = len(perm)
    return n >= 2 and perm == [*range(n - 2), n - 1, n - 2]


def _read_transpose(view: OpView, chain: fx.Node, gm: fx.GraphModule) -> Piece | str:
    return Piece() if _last_two_swapped(view) else f"{view.node.name} does not swap the last two dims"


CASTS = frozenset(methods("to", "float", "half", "bfloat16", "double", "type", "type_as", "contiguous", "clone")
                  + aten_ops("to", "_to_copy", "type_as", "contiguous", "clone", "alias") + [torch.clone])
"""Ops that only cast or copy: dropped from the chain (the dtype check keeps the result's dtype)."""

DROPOUTS = frozenset([nn.Dropout, F.dropout, torch.dropout] + aten_ops("dropout", "dropout_"))
ADDS = frozenset([operator.add, operator.iadd, torch.add] + methods("add", "add_") + aten_ops("add", "add_"))
SOFTMAXES = frozenset([nn.Softmax, F.softmax, torch.softmax] + methods("softmax")
                      + aten_ops("softmax", "_softmax", "_safe_softmax"))

SCALE = Link("scale", frozenset({"mul", "div"}), frozenset(), (0, 1), _read_scale)
MASK = Link("mask", frozenset(), ADDS, (0, 1), _read_add)
FILL = Link("fill", frozenset({"masked_fill"}), frozenset(), (0,), _read_fill)
CAST = Link("cast", frozenset(), CASTS, (0,), _read_pass_through)
DROPOUT = Link("dropout", frozenset(), DROPOUTS, (0,), _read_dropout)
TRANSPOSE = Link("transpose", frozenset({"permute"}), frozenset(), (0,), _read_transpose)

SCORES_LINKS = (SCALE, MASK, FILL, CAST)
"""What may sit between ``q @ k^T`` and the softmax."""
WEIGHTS_LINKS = (CAST, DROPOUT)
"""What may sit between the softmax and ``weights @ v``."""
QUERY_LINKS = (SCALE,)
"""What may sit on the query before the scores matmul (timm scales q)."""
KEY_LINKS = (SCALE, TRANSPOSE)
"""What may sit on the key before the scores matmul."""


Step = tuple[Link, OpView, fx.Node]
"""A link on the chain: the link, the op, and the operand the chain runs through."""


@dataclass(frozen=True)
class Attention:
    """A matched hand-written attention.

    Attributes:
        softmax: the softmax.
        scores: ``q @ k^T``.
        out: ``weights @ v``, whose uses the SDPA call takes over.
        to_scores: the links from the softmax back to the scores, softmax side first.
        to_out: the links from the softmax to the output matmul.
        query: the peeled links on q, and the node q is read from.
        key: the peeled links on k^T, and the node read as k^T (or as k when a transpose was peeled).
        gm: the graph module.
    """

    softmax: OpView
    scores: OpView
    out: OpView
    to_scores: tuple[Step, ...]
    to_out: tuple[Step, ...]
    query: tuple[tuple[Step, ...], fx.Node]
    key: tuple[tuple[Step, ...], fx.Node]
    gm: fx.GraphModule

    @property
    def key_transposed(self) -> bool:
        """Whether ``key[1]`` is k itself rather than k^T: the scores are an einsum of q and k, or a transpose of
        k was peeled."""
        return self.scores.kind == "einsum" or any(link is TRANSPOSE for link, _, _ in self.key[0])

    def steps(self) -> list[Step]:
        """Every link of the match."""
        return [*self.query[0], *self.key[0], *self.to_scores, *self.to_out]

    def nodes(self) -> list[fx.Node]:
        """The nodes the rewrite replaces."""
        return [self.scores.node, self.softmax.node, self.out.node, *(v.node for _, v, _ in self.steps())]


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _dtype(node: fx.Node) -> torch.dtype | None:
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _of_activations(view: OpView | None) -> bool:
    """A product of two activations (not a projection by a stored weight)."""
    return (view is not None and view.kind in ("matmul", "einsum") and len(view.inputs) == 2
            and all(t is not None and t.node is not None and not t.is_param and t.ndim >= 2 for t in view.inputs))


def _einsum_tails(view: OpView) -> tuple[str, str, str] | None:
    """The last two letters of both operands and of the output of an einsum whose other letters are one shared
    batch prefix (``("id", "jd", "ij")`` for ``"bhid,bhjd->bhij"``), with three distinct letters among them."""
    eq = str(view.attrs.get("equation", "")).replace(" ", "")
    if "->" not in eq or "..." in eq:
        return None
    lhs, out = eq.split("->")
    specs = lhs.split(",")
    if len(specs) != 2 or any(len(x) < 2 or x[:-2] != out[:-2] for x in specs) or len(out) < 2:
        return None
    a, b, o = specs[0][-2:], specs[1][-2:], out[-2:]
    letters = set(a + b)
    return (a, b, o) if len(letters) == 3 and not letters & set(out[:-2]) else None


def _product_of_activations(view: OpView | None, fits: Callable[[str, str, str], bool]) -> bool:
    """A matmul of two activations, or an einsum of two whose operand and output tails ``fits`` accepts.

    Args:
        view: the node's view (``None``: not an op).
        fits: called with the last two letters of the two operands and of the output (``_einsum_tails``).

    Returns:
        Whether the view is such a product.
    """
    if not _of_activations(view):
        return False
    assert view is not None
    tails = _einsum_tails(view) if view.kind == "einsum" else None
    return view.kind == "matmul" or (tails is not None and fits(*tails))


def _scores_product(view: OpView | None) -> bool:
    """``q @ k^T`` (a matmul, whose second operand is k^T) or ``einsum("...id,...jd->...ij", q, k)``."""
    return _product_of_activations(view, lambda a, b, o: a[1] == b[1] and o == a[0] + b[0])


def _weighted_sum(view: OpView | None) -> bool:
    """``weights @ v`` (a matmul) or ``einsum("...ij,...jd->...id", weights, v)``."""
    return _product_of_activations(view, lambda a, b, o: a[1] == b[0] and o == a[0] + b[1])


def _back_to_scores(node: fx.Node, gm: fx.GraphModule, depth: int = 0) -> tuple[OpView, list[Step]] | None:
    """The scores matmul the softmax input comes from through ``SCORES_LINKS``, with the links (softmax side
    first); ``None`` when the input is not attention scores."""
    view = view_of(node, gm)
    if view is None or depth > MAX_LINKS:
        return None
    if _scores_product(view):
        return view, []
    for link in SCORES_LINKS:
        if not link.matches(view, gm):
            continue
        for operand in link.chain_operands(view):
            found = _back_to_scores(operand, gm, depth + 1)
            if found is not None:
                return found[0], [(link, view, operand), *found[1]]
    return None


def _forward_to_out(softmax: fx.Node, gm: fx.GraphModule) -> tuple[OpView, list[Step]] | str:
    """The matmul of the weights with v, through ``WEIGHTS_LINKS``, or why the weights go elsewhere."""
    steps: list[Step] = []
    node = softmax
    for _ in range(MAX_LINKS):
        user = _single_user(node)
        if user is None:
            return (f"the attention weights {node.name} are also used by "
                    f"{', '.join(u.name for u in node.users) or 'nothing'} (returned or stored): SDPA does not "
                    "expose them")
        view = view_of(user, gm)
        if _weighted_sum(view):
            assert view is not None and view.inputs[0] is not None
            if view.inputs[0].node is not node:
                return f"the attention weights {node.name} are the right operand of {user.name}"
            return view, steps
        link = next((lk for lk in WEIGHTS_LINKS if view is not None and lk.matches(view, gm)), None)
        if link is None or view is None:
            return f"the attention weights {node.name} go to {user.name}, not to a matmul with the values"
        steps.append((link, view, node))
        node = user
    return f"more than {MAX_LINKS} ops between {softmax.name} and a matmul with the values"


def _peel(node: fx.Node, gm: fx.GraphModule, links: tuple[Link, ...]) -> tuple[tuple[Step, ...], fx.Node]:
    """Walk back from an operand of the scores matmul through single-user ``links`` whose reads succeed."""
    steps: list[Step] = []
    for _ in range(MAX_LINKS):
        view = view_of(node, gm)
        if view is None or len(node.users) != 1:
            break
        found = None
        for link in links:
            if link is TRANSPOSE and any(lk is TRANSPOSE for lk, _, _ in steps):
                continue  # one transpose turns k^T into k; a second would turn it back
            operands = link.chain_operands(view) if link.matches(view, gm) else []
            for operand in operands:
                if isinstance(link.read(view, operand, gm), Piece):
                    found = (link, view, operand)
                    break
            if found:
                break
        if found is None:
            break
        steps.append(found)
        node = found[2]
    return tuple(steps), node


def match_attention(softmax: fx.Node, gm: fx.GraphModule) -> Attention | str | None:
    """The attention whose softmax is ``softmax``: an ``Attention``, the reason it cannot be rewritten, or
    ``None`` when the softmax does not read ``q @ k^T`` scores (not attention at all)."""
    view = view_of(softmax, gm)
    if view is None or op_of(softmax, gm) not in SOFTMAXES:
        return None
    scores_input = view.inputs[0].node if view.inputs and view.inputs[0] is not None else None
    found = _back_to_scores(scores_input, gm) if scores_input is not None else None
    if found is None:
        return None
    scores, to_scores = found
    forward = _forward_to_out(softmax, gm)
    if isinstance(forward, str):
        return forward
    out, to_out = forward
    a, b = scores.inputs
    assert a is not None and a.node is not None and b is not None and b.node is not None
    return Attention(view, scores, out, tuple(to_scores), tuple(to_out), _peel(a.node, gm, QUERY_LINKS),
                     _peel(b.node, gm, KEY_LINKS if scores.kind == "matmul" else QUERY_LINKS), gm)


# ---------------------------------------------------------------- checks
def _softmax_last_dim(m: Attention) -> str | None:
    dim, out = m.softmax.attrs.get("dim"), m.softmax.outputs[0] if m.softmax.outputs else None
    if dim is None or out is None:
        return f"{m.softmax.node.name} has no explicit dim"
    if int(dim) % out.ndim != out.ndim - 1:
        return f"{m.softmax.node.name} normalizes dim {dim}, not the last (key) dim"
    return None


def _links_read(m: Attention) -> str | None:
    for link, view, operand in m.steps():
        piece = link.read(view, operand, m.gm)
        if isinstance(piece, str):
            return piece
    return None


def _single_use_scores(m: Attention) -> str | None:
    chain = [m.scores.node, *(v.node for _, v, _ in reversed(m.to_scores))]
    for node in chain:
        if len(node.users) != 1:
            return f"the scores {node.name} are also used by {', '.join(u.name for u in node.users)}"
    return None


def _masks_after_scales(m: Attention) -> str | None:
    seen_scale = False
    for link, view, _ in m.to_scores:  # softmax side first
        if link is SCALE:
            seen_scale = True
        elif link in (MASK, FILL) and seen_scale:
            return f"{view.node.name} adds its mask before a scale, which scales the mask too"
    if sum(link is FILL for link, _, _ in m.to_scores) > 1 or (
            any(link is FILL for link, _, _ in m.to_scores) and any(link is MASK for link, _, _ in m.to_scores)):
        return "the scores are masked by a masked_fill and another mask; SDPA takes one mask"
    return None


def _qkv(m: Attention) -> tuple[fx.Node, fx.Node | None, fx.Node]:
    """q, k (``None`` when only k^T is in the graph) and v."""
    v = m.out.inputs[1]
    assert v is not None and v.node is not None
    return m.query[1], m.key[1] if m.key_transposed else None, v.node


def _shapes_agree(m: Attention) -> str | None:
    q, _, v = _qkv(m)
    kt = _shape(m.key[1])
    qs, vs = _shape(q), _shape(v)
    if qs is None or vs is None or kt is None:
        return "q, k or v has no recorded shape"
    if m.key_transposed:
        kt = (*kt[:-2], kt[-1], kt[-2])
    if not (len(qs) == len(kt) == len(vs)) or not (qs[:-2] == kt[:-2] == vs[:-2]):
        return (f"q {list(qs)}, k^T {list(kt)} and v {list(vs)} differ in their batch dims (the matmuls broadcast "
                "them); SDPA needs equal batch dims")
    return None


def _dtypes_agree(m: Attention) -> str | None:
    q, _, v = _qkv(m)
    dtypes = {_dtype(q), _dtype(m.key[1]), _dtype(v), _dtype(m.out.node)}
    if len(dtypes) != 1 or None in dtypes:
        return (f"q, k, v and the output have dtypes {_dtype(q)}, {_dtype(m.key[1])}, {_dtype(v)}, "
                f"{_dtype(m.out.node)}; SDPA computes in one dtype")
    return None


def _mask_fits(m: Attention) -> str | None:
    scores = _shape(m.scores.node)
    q_dtype = _dtype(m.query[1])
    for link, view, operand in m.to_scores:
        piece = link.read(view, operand, m.gm)
        if not isinstance(piece, Piece) or scores is None:
            continue
        mask = piece.mask if piece.mask is not None else piece.masked_out
        if mask is None:
            continue
        shape = _shape(mask)
        if shape is None:
            return f"the mask {mask.name} has no recorded shape"
        if len(shape) > len(scores) or torch.broadcast_shapes(shape, scores) != torch.Size(scores):
            return (f"the mask {mask.name} {list(shape)} broadcasts the scores {list(scores)} to a larger shape; "
                    "SDPA's mask must broadcast to the scores' shape")
        if piece.mask is not None and _dtype(mask) not in (q_dtype, torch.bool):
            return f"the mask {mask.name} is {_dtype(mask)} and the queries {q_dtype}; SDPA needs one dtype"
        if piece.mask is not None and _dtype(mask) == torch.bool:
            return f"{view.node.name} adds a boolean tensor {mask.name} to the scores"
    return None


CHECKS: tuple[Callable[[Attention], str | None], ...] = (
    _softmax_last_dim, _links_read, _single_use_scores, _masks_after_scales, _shapes_agree, _dtypes_agree,
    _mask_fits)
"""Why a matched attention must not be rewritten; the first reason wins and is recorded as a Skip."""


def veto(m: Attention) -> str | None:
    """The first check's reason not to rewrite ``m``, or ``None``."""
    return next((r for r in (check(m) for check in CHECKS) if r is not None), None)


# ---------------------------------------------------------------- rewrite
@dataclass(frozen=True)
class Dialect:
    """The ops the rewrite inserts: ATen overloads in exported graphs, torch functions in traced ones."""

    sdpa: Any
    transpose: Any
    add: Any
    logical_not: Any


TORCH = Dialect(F.scaled_dot_product_attention, torch.transpose, operator.add, torch.logical_not)
ATEN = Dialect(aten.scaled_dot_product_attention.default, aten.transpose.int, aten.add.Tensor,
               aten.logical_not.default)


def _mask_node(m: Attention, e: GraphEditor, ops: Dialect) -> fx.Node | None:
    pieces = [p for link, view, operand in m.to_scores if isinstance(p := link.read(view, operand, m.gm), Piece)]
    masks = [p.mask for p in reversed(pieces) if p.mask is not None]  # in the order the graph adds them
    before = m.out.node
    for p in pieces:
        if p.masked_out is not None:
            return e.call("call_function", ops.logical_not, [p.masked_out], before=before)
    if not masks:
        return None
    total = masks[0]
    for extra in masks[1:]:
        total = e.call("call_function", ops.add, [total, extra], before=before)
    return total


def rewrite(m: Attention, e: GraphEditor) -> None:
    """Insert the SDPA call before the output matmul, point the output's users at it, erase the chain."""
    gm = e.gm
    ops = ATEN if isinstance(m.out.node.target, torch._ops.OpOverload) else TORCH
    before = m.out.node
    scale = math.prod(p.scale for link, view, operand in m.steps()
                      if isinstance(p := link.read(view, operand, gm), Piece))
    q, k, v = _qkv(m)
    if k is None:
        k = e.call("call_function", ops.transpose, [m.key[1], -2, -1], before=before)
    mask = _mask_node(m, e, ops)
    sdpa = e.call("call_function", ops.sdpa, [q, k, v], {"attn_mask": mask, "scale": scale}, before=before)
    sdpa.meta.update({key: m.out.node.meta[key] for key in ("val", "stack_trace") if key in m.out.node.meta})
    links = ", ".join(link.name for link, _, _ in m.steps()) or "no links"
    e.replace_uses(m.out.node, sdpa, f"{m.softmax.node.name}'s attention ({links}) is one SDPA call, scale {scale:.6g}")
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    e.erase_chain(sorted(set(m.nodes()), key=order.__getitem__))


@register_pass
@dataclass(frozen=True)
class SdpaPass(Pass):
    """Rewrite hand-written attention, ``softmax(q k^T * scale + mask) v``, into scaled_dot_product_attention.

    Exact within float tolerance: SDPA computes the same formula, in one kernel on GPUs. Attention whose weights
    are used elsewhere, whose softmax is over another dim, whose scale is not a constant, whose mask broadcasts
    the scores to a larger shape, or whose dropout is active is left alone with the reason.

    Example:
        >>> gm = fxopt.trace(transformers.GPT2Model(config).eval(), ids)  # attn_implementation="eager"
        >>> PassManager("sdpa", checked=True).run(gm, (ids,)).results[-1].metrics["rewritten"]
        12
    """

    name: ClassVar[str] = "sdpa"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Rewrite every matched attention whose checks pass."""
        editor = GraphEditor(gm, ctx, str(self))
        rewritten = 0
        for node in live_calls(gm):
            found = match_attention(node, gm)
            if found is None:
                continue
            if isinstance(found, str):
                editor.skip(self.name, node, found)
                continue
            if fire(editor, node, self.name, veto(found), partial(rewrite, found, editor)):
                rewritten += 1
        return editor.finish({"rewritten": rewritten})
