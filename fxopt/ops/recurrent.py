"""Recurrent layers: ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` as leaf modules, and their cells (``nn.RNNCell``,
``nn.LSTMCell``, ``nn.GRUCell``) called step by step.

The hidden size is one group for the whole module (every layer and direction shares ``hidden_size``). Its members:
the rows of each gate block of every ``weight_ih``/``weight_hh``/bias (``gates x hidden``, gate outer), the
columns of every ``weight_hh`` (the recurrence) and of the next layers' ``weight_ih`` (``directions x hidden``),
the module's output features (``directions x hidden``) and the last dim of ``h_n``/``c_n``.

Why removal is exact: with every row of hidden unit ``j`` zero, its gate pre-activations are zero, so an RNN gives
``tanh(0) = 0``, a GRU ``h = z * h_prev`` with ``z = 1/2``, and an LSTM ``c = c_prev / 2``, ``h = tanh(c) / 2``:
unit ``j`` stays zero when it starts at zero. So the initial state must be zero there: states the module makes
itself (none passed) or that the model creates with ``zeros`` take part in the group; any other initial state
reaches the unit's zero status as an activation (a graph input freezes the group). ``proj_size`` (an LSTM whose
hidden state is projected) is a barrier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy
import torch.fx as fx
import torch.nn as nn

from fxopt.ops.cost import OpCost, Sizes, default_cost, op_cost
from fxopt.ops.facts import Facts
from fxopt.ops.registry import REGISTRY
from fxopt.ops.resize import Resizer
from fxopt.ops.view import Axis, OpView, TensorRef, output_refs, param_ref, ref_of

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
"""Gate blocks stacked in the rows of each weight, by ``RNNBase.mode``."""

ZERO_FACTORIES = ("zeros", "new_zeros", "zeros_like")


def _recurrent_form(node: fx.Node, gm: fx.GraphModule, kind: str, attrs: Callable[[Any], dict[str, Any]]) \
        -> OpView:
    """A recurrent layer's or cell's view: input, initial states, every parameter, and ``attrs(module)``."""
    path = str(node.target)
    mod = gm.get_submodule(path)
    hx = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
    params = {name: param_ref(path, name, t) for name, t in mod.named_parameters(recurse=False)}
    return OpView(node, kind, (ref_of(node.args[0]), *_state_refs(hx)), params,
                  {**attrs(mod), "states_given": hx is not None, "path": path}, output_refs(node), mod)


def _rnn_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    return _recurrent_form(node, gm, kind, lambda mod: {
        "mode": mod.mode, "hidden_size": mod.hidden_size, "num_layers": mod.num_layers,
        "directions": 2 if mod.bidirectional else 1, "proj_size": getattr(mod, "proj_size", 0),
        "hidden_key": f"{node.name}:hidden", "input_weight": "weight_ih_l0"})


REGISTRY.register_ops("rnn", [nn.RNN, nn.LSTM, nn.GRU], _rnn_form)


def _state_refs(hx: object) -> tuple[TensorRef | None, ...]:
    """The initial state's tensors: none, one, a tuple of nodes, or a node holding a tuple (a cell's (h, c))."""
    if hx is None:
        return ()
    if isinstance(hx, fx.Node) and isinstance(hx.meta.get("val"), (tuple, list)):
        return output_refs(hx)
    return tuple(ref_of(h) for h in (hx if isinstance(hx, (tuple, list)) else (hx,)))


def _is_zeros(state: TensorRef) -> bool:
    node = state.node
    return node is not None and node.op in ("call_function", "call_method") and (
        getattr(node.target, "__name__", str(node.target)).split(".")[0] in ZERO_FACTORIES)


@REGISTRY.rule("rnn")
def rnn_rule(view: OpView, facts: Facts) -> None:
    """RNN/LSTM/GRU: the hidden size is one group over gate blocks, layers, directions, outputs and states."""
    name = view.node.name
    if view.attrs["proj_size"]:
        facts.barrier(view, "an LSTM with proj_size projects its hidden state", "use proj_size=0 to prune it")
        return
    x, *states = view.inputs
    if x is None or (view.attrs["states_given"] and any(s is None for s in states)) or not view.outputs:
        facts.barrier(view, f"{name}'s inputs are not plain tensors (a PackedSequence?)", "pass padded tensors")
        return
    hidden = _hidden(view)
    gates = Axis(f"{name}:gates", 0, GATES[view.attrs["mode"]])
    dirs = Axis(f"{name}:directions", 0, view.attrs["directions"])
    facts.freeze(gates, f"gate blocks of {name}")
    facts.freeze(dirs, f"directions of {name}")
    producers: list[Axis | None] = []
    for layer in range(view.attrs["num_layers"]):
        for direction in range(view.attrs["directions"]):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = view.params[f"weight_ih{suffix}"], view.params[f"weight_hh{suffix}"]
            assert w_ih is not None and w_hh is not None
            rows = [w_ih.axis(0), w_hh.axis(0)] + [b.axis(0) for b in (view.params.get(f"bias_ih{suffix}"),
                                                                         view.params.get(f"bias_hh{suffix}"))
                                                    if b is not None]
            for r in rows:
                facts.product([r], [gates, hidden])
            producers += rows
            facts.same(w_hh.axis(1), hidden)
            if layer == 0:
                facts.same(x.axis(-1), w_ih.axis(1))
            else:
                facts.product([w_ih.axis(1)], [dirs, hidden])
    facts.sink(x.axis(-1), True, f"{name} sums over its input features")
    for s in states:
        assert s is not None
        facts.same(s.axis(-1), hidden)
        facts.freeze(s.axis(0), f"layers x directions of {name}'s state")
        if s.ndim == 3:
            facts.same(s.axis(1), x.axis(0 if _batch_first(view) else 1))
    producers += [s.axis(-1) for s in states if s is not None and not _is_zeros(s)]
    out, *finals = view.outputs
    for d in range(x.ndim - 1):
        facts.transfer(out.axis(d), x.axis(d))
    facts.product([out.axis(-1)], [dirs, hidden])
    facts.zero(out.axis(-1), "all", producers)
    for f in finals:
        facts.same(f.axis(-1), hidden)
        facts.freeze(f.axis(0), f"layers x directions of {name}'s final state")
        if f.ndim == 3:
            facts.same(f.axis(1), x.axis(0 if _batch_first(view) else 1))
        facts.zero(f.axis(-1), "all", producers)


def _batch_first(view: OpView) -> bool:
    return bool(getattr(view.module, "batch_first", False))


def _cell_form(node: fx.Node, gm: fx.GraphModule, kind: str) -> OpView:
    return _recurrent_form(node, gm, kind, lambda mod: {
        "hidden_size": mod.hidden_size, "hidden_key": f"{node.target}:hidden", "input_weight": "weight_ih",
        "gates": 4 if isinstance(mod, nn.LSTMCell) else 3 if isinstance(mod, nn.GRUCell) else 1})


REGISTRY.register_ops("rnn_cell", [nn.RNNCell, nn.LSTMCell, nn.GRUCell], _cell_form)


@REGISTRY.rule("rnn_cell")
def rnn_cell_rule(view: OpView, facts: Facts) -> None:
    """One step of a recurrent cell: the hidden size couples gate blocks and the states it reads and returns.

    Every call of the cell shares that group, through the weights; the input features are summed (exact sink).
    """
    x, *states = view.inputs
    if x is None or (view.attrs["states_given"] and any(s is None for s in states)) or not view.outputs:
        facts.barrier(view, f"{view.node.name}'s inputs are not plain tensors", "pass tensors")
        return
    path = view.attrs["path"]
    hidden = _hidden(view)
    gates = Axis(f"{path}:gates", 0, view.attrs["gates"])
    facts.freeze(gates, f"gate blocks of {path}")
    w_ih, w_hh = view.params["weight_ih"], view.params["weight_hh"]
    assert w_ih is not None and w_hh is not None
    rows = [w_ih.axis(0), w_hh.axis(0)] + [b.axis(0) for b in (view.params.get("bias_ih"),
                                                                 view.params.get("bias_hh")) if b is not None]
    for r in rows:
        facts.product([r], [gates, hidden])
    facts.same(w_hh.axis(1), hidden)
    facts.same(x.axis(-1), w_ih.axis(1))
    facts.sink(x.axis(-1), True, f"{view.node.name} sums over its input features")
    producers: list[Axis | None] = list(rows)
    for s in states:
        assert s is not None
        facts.same(s.axis(-1), hidden)
        if s.ndim == 2 and x.ndim == 2:
            facts.same(s.axis(0), x.axis(0))
        if not _is_zeros(s):
            producers.append(s.axis(-1))
    for out in view.outputs:
        facts.same(out.axis(-1), hidden)
        if out.ndim == 2 and x.ndim == 2:
            facts.transfer(out.axis(0), x.axis(0))
        facts.zero(out.axis(-1), "all", producers)


@REGISTRY.rewriter("rnn", "rnn_cell")
def rnn_rewrite(view: OpView, resizer: Resizer) -> None:
    """Keep ``hidden_size`` and ``input_size`` in step with the sliced weights."""
    resizer.set_module_attr(view, "hidden_size", resizer.new_size(_hidden(view)))
    w_ih = view.params[view.attrs["input_weight"]]
    assert w_ih is not None
    resizer.set_module_attr(view, "input_size", resizer.new_size(w_ih.axis(1)))


def _hidden(view: OpView) -> Axis:
    """The synthetic axis of the hidden units (a layer's per call; a cell's shared by all its calls)."""
    return Axis(view.attrs["hidden_key"], 0, view.attrs["hidden_size"])


@REGISTRY.cost("rnn", "rnn_cell")
def rnn_cost(view: OpView, sizes: Sizes) -> OpCost:
    """RNN/LSTM/GRU (and one step of their cells): a MAC per time step, batch row and element of every weight
    matrix, plus the bias adds.

    The gates' nonlinearities and products are left out (a few FLOPs per hidden unit and step, against the
    ``input + hidden`` MACs per gate row).
    """
    x = view.inputs[0]
    if x is None:
        return default_cost(view, sizes)
    tokens = sizes.numel(x, range(x.ndim - 1))
    weights = sympy.Add(*[sizes.numel(p) for n, p in view.params.items() if p is not None and n.startswith("weight")])
    biases = sympy.Add(*[sizes.numel(p) for n, p in view.params.items() if p is not None and n.startswith("bias")])
    return op_cost(view, sizes, "matmul", 2 * tokens * weights + tokens * biases, tokens * weights)
