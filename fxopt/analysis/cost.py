"""Cost model: per-node FLOPs and bytes as sympy expressions in the batch size ``B`` and sequence length ``S``,
and a roofline time per target.

The formulas are the op registry's (``REGISTRY.cost``, one per op kind in ``fxopt.ops``); this module supplies
the symbolic sizes they read and turns their FLOPs and bytes into time.

Shapes come from re-running the graph under fake tensors whose batch dim (dim 0 of every input) and sequence
dim (dim 1 of 2-D integer inputs, i.e. token ids) are symbolic, so a node's FLOPs read e.g.
``2*B*S**2*768`` for attention scores. Graphs specialized to their example shapes (``torch.export`` output
has its view sizes baked in) cannot run with other sizes: for them the costs are exact at the example shapes
and scale linearly in ``B`` (``CostTable.symbolic`` is False).

Time per node on a target is ``roofline_time`` (which the pruning cost model shares): the work,
``max((flops + ramp) / (peak * efficiency), bytes / bandwidth)`` with the peak of the dtype the op computes in
(fp32 convolutions run at the TF32 peak where PyTorch enables it) and the efficiency of its category, combined
with a fixed per-op overhead: added to the work on CPUs, overlapping it (``max``) on GPUs, where kernel launches
queue while the previous kernel runs. The model's time is the sum over nodes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sympy
import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

from fxopt.ops.cost import Sizes
from fxopt.ops.registry import REGISTRY, OpRegistry
from fxopt.ops.view import OpView

log = logging.getLogger(__name__)

DTYPE_NAMES = {"float64": "fp64", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "int8": "int8",
               "qint8": "int8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8"}
"""torch dtype names to the short names cost rows and targets use."""


class Roofline(Protocol):
    """What the cost model reads of a hardware target (an ``fxopt.targets.Target`` is one)."""

    @property
    def name(self) -> str:
        """The target's name."""
        ...

    @property
    def device(self) -> str:
        """The torch device type models run on for this target (``"cpu"``, ``"cuda"``)."""
        ...

    @property
    def memory_bandwidth(self) -> float:
        """Main-memory bandwidth in bytes/s."""
        ...

    @property
    def op_overhead_s(self) -> float:
        """Fixed cost per op in seconds."""
        ...

    def peak(self, dtype: str, sparse: bool = False) -> float:
        """Peak FLOP/s for a dtype short name."""
        ...

    @property
    def launch_overlaps(self) -> bool:
        """Whether the per-op overhead overlaps the work (``max``) rather than adding to it."""
        ...

    def efficiency_of(self, category: str) -> float:
        """Achievable fraction of peak compute for an op category."""
        ...

    def overhead_of(self, category: str) -> float:
        """Fixed cost in seconds of one op of a category."""
        ...

    def ramp_of(self, category: str) -> float:
        """FLOPs at which one op of a category reaches half its efficiency (0: none)."""
        ...

    def compute_dtype(self, dtype: str, category: str) -> str:
        """The dtype whose peak an op of a category on ``dtype`` tensors runs at (``"tf32"`` for fp32 convs)."""
        ...


B, S = sympy.symbols("B S", positive=True, integer=True)


def roofline_time(target: Roofline, category: str, dtype: str, flops: float, nbytes: float) -> float:
    """Seconds one node takes on ``target``: its work combined with its fixed per-op cost; views take no time.

    The work is ``max(compute, memory)``: compute is ``(flops + ramp) / (peak * efficiency)`` (the ramp makes
    small ops run below peak), memory ``nbytes / bandwidth``. The fixed cost adds to the work, or where the
    target's launches overlap the work (GPUs) the node takes ``max(overhead, work)``.

    Args:
        target: the hardware (an ``fxopt.targets.Target``, or the pruning cost model's ``LatencyModel``).
        category: the op category of the node's ``OpCost``; selects the target's efficiency, ramp and overhead.
        dtype: short dtype name of the node's output; with the category, selects the target's peak.
        flops: floating-point operations.
        nbytes: bytes read and written.
    """
    if category == "view":
        return 0.0
    rate = target.peak(target.compute_dtype(dtype, category)) * target.efficiency_of(category)
    compute = (flops + target.ramp_of(category)) / rate if flops > 0 else 0.0
    work = max(compute, nbytes / target.memory_bandwidth)
    overhead = target.overhead_of(category)
    return max(overhead, work) if target.launch_overlaps else work + overhead


@dataclass(frozen=True)
class NodeCost:
    """The cost of one node.

    Attributes:
        node: node name.
        kind: OpView kind.
        category: one of ``fxopt.ops.cost.CATEGORIES`` (``"matmul"``, ``"conv"``, ``"depthwise"``, ``"grouped"``,
            ...); selects the target's efficiency.
        flops: floating-point operations (multiply-add = 2).
        bytes: bytes read and written (activations, parameters, outputs; views move nothing).
        dtype: short dtype name of the output (``"fp32"``, ...).
    """

    node: str
    kind: str
    category: str
    flops: sympy.Expr
    bytes: sympy.Expr
    dtype: str


@dataclass(frozen=True)
class CostTable:
    """Per-node costs of a graph, with the example values of the symbols.

    Attributes:
        rows: one NodeCost per call node, in graph order.
        bindings: the example value of each symbol name (``{"B": 1, "S": 128}``).
        symbolic: whether the expressions come from symbolic shapes (else: exact at the example, linear in B).
        target: the target ``time()`` uses by default.
    """

    rows: tuple[NodeCost, ...]
    bindings: Mapping[str, int] = field(default_factory=dict)
    symbolic: bool = True
    target: Roofline | None = None

    def total_flops(self) -> sympy.Expr:
        """Total FLOPs as an expression."""
        return sympy.Add(*[r.flops for r in self.rows])

    def total_bytes(self) -> sympy.Expr:
        """Total bytes as an expression."""
        return sympy.Add(*[r.bytes for r in self.rows])

    def _subs(self, values: Mapping[str, int]) -> dict[sympy.Symbol, int]:
        merged = {**self.bindings, **values}
        return {sym: int(merged[sym.name]) for sym in (B, S) if sym.name in merged}

    def flops(self, **values: int) -> float:
        """Total FLOPs at the example sizes, overridden by ``values`` (``B=8``)."""
        return float(self.total_flops().xreplace(self._subs(values)))

    def bytes(self, **values: int) -> float:
        """Total bytes at the example sizes, overridden by ``values``."""
        return float(self.total_bytes().xreplace(self._subs(values)))

    def node_times(self, target: Roofline | None = None, **values: int) -> list[float]:
        """Roofline time of each row on ``target`` (the table's target by default), in seconds."""
        target = target or self.target
        if target is None:
            raise ValueError("no target: pass one or build the table with fxopt.cost(..., target=...)")
        subs = self._subs(values)
        return [roofline_time(target, r.category, r.dtype, float(r.flops.xreplace(subs)),
                              float(r.bytes.xreplace(subs))) for r in self.rows]

    def time(self, target: Roofline | None = None, **values: int) -> float:
        """Predicted time of one forward pass on ``target``, in seconds."""
        return math.fsum(self.node_times(target, **values))

    def to_text(self, top: int = 15, target: Roofline | None = None) -> str:
        """A table of the ``top`` most expensive nodes and the totals."""
        target = target or self.target
        subs = self._subs({})
        lines = [f"cost at {', '.join(f'{k}={v}' for k, v in self.bindings.items()) or 'example shapes'}"
                 f"{'' if self.symbolic else ' (specialized graph: linear in B)'}"]
        lines.append(f"  total FLOPs = {sympy.factor_terms(self.total_flops())}")
        lines.append(f"  total: {self.flops() / 1e9:.3f} GFLOP, {self.bytes() / 1e6:.1f} MB")
        times = self.node_times(target) if target is not None else [0.0] * len(self.rows)
        if target is not None:
            lines.append(f"  predicted on {target.name}: {sum(times) * 1e3:.3f} ms")
        order = sorted(range(len(self.rows)), key=lambda i: (-times[i], -float(self.rows[i].flops.xreplace(subs))))
        lines.append(f"  {'node':32} {'kind':12} {'MFLOP':>10} {'MB':>8} {'ms':>8}  FLOPs")
        for i in order[:top]:
            r = self.rows[i]
            f, b = float(r.flops.xreplace(subs)), float(r.bytes.xreplace(subs))
            lines.append(f"  {r.node[:32]:32} {r.kind[:12]:12} {f / 1e6:10.2f} {b / 1e6:8.2f} "
                         f"{times[i] * 1e3:8.3f}  {r.flops}")
        return "\n".join(lines)


# ---------------------------------------------------------------- symbolic shapes
def _dynamic_dims(x: torch.Tensor) -> dict[int, sympy.Symbol]:
    dims = {0: B} if x.ndim >= 1 else {}
    if x.ndim == 2 and not x.is_floating_point():
        dims[1] = S
    return dims


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)


def symbolic_values(gm: fx.GraphModule, inputs: Sequence[Any]) -> tuple[dict[fx.Node, Any], dict[Any, sympy.Symbol]]:
    """Run ``gm`` under fake tensors with symbolic batch/sequence dims; node values and symbol renaming.

    Raises:
        Exception: whatever the graph raises when its sizes are specialized (the caller falls back).
    """
    from torch.fx.experimental.symbolic_shapes import (
        DimDynamic,
        ShapeEnv,
        StatelessSymbolicContext,
        SymbolicContext,
    )

    env = ShapeEnv(duck_shape=False)
    mode = FakeTensorMode(shape_env=env, allow_non_fake_inputs=True)
    renames: dict[Any, sympy.Symbol] = {}
    fakes = []
    for x in inputs:
        if not isinstance(x, torch.Tensor):
            fakes.append(x)
            continue
        dims = _dynamic_dims(x)
        shape = [max(2, int(s)) if d in dims else int(s) for d, s in enumerate(x.shape)]
        real = torch.zeros(shape, dtype=x.dtype)
        ctx: SymbolicContext = StatelessSymbolicContext(
            dynamic_sizes=[DimDynamic.DYNAMIC if d in dims else DimDynamic.STATIC for d in range(x.ndim)])
        fake = mode.from_tensor(real, symbolic_context=ctx)
        for d, sym in dims.items():
            size = fake.shape[d]
            assert isinstance(size, torch.SymInt), f"dim {d} was marked dynamic but came out static"
            renames[size.node.expr] = sym
        fakes.append(fake)
    rec = _Recorder(gm)
    with mode:
        rec.run(*fakes)
    specialized = [str(sym) for expr, sym in renames.items() if expr in env.replacements]
    if specialized:
        raise ValueError(f"the graph specializes {', '.join(specialized)} to a constant")
    return dict(rec.env), renames


# ---------------------------------------------------------------- per-node costs
def _tensors(value: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def short_dtype(value: Any) -> str:
    """Short dtype name (``"fp32"``, ``"bf16"``, ...) of a node's value: its first tensor's, fp32 by default."""
    ts = _tensors(value)
    return DTYPE_NAMES.get(str(ts[0].dtype).replace("torch.", ""), "fp32") if ts else "fp32"


class _SymbolicSizes(Sizes):
    """Sizes from the values of a symbolic run where there are some, else from ``node.meta["val"]``."""

    def __init__(self, gm: fx.GraphModule, values: Mapping[fx.Node, Any] | None) -> None:
        super().__init__(gm)
        self.values = values or {}

    def value(self, node: fx.Node) -> Any:
        """The (symbolic) value of ``node``, else its recorded ``meta["val"]``."""
        if node in self.values:
            return self.values[node]
        return node.meta.get("val")


def node_cost(view: OpView, sizes: Sizes, registry: OpRegistry = REGISTRY) -> NodeCost:
    """FLOPs, bytes and category of one node: its kind's registered cost, read with ``sizes``."""
    c = registry.cost_of(view, sizes)
    return NodeCost(view.node.name, view.kind, c.category, sympy.expand(c.flops), sympy.expand(c.bytes),
                    short_dtype(sizes.value(view.node)))


def _depends_on_inputs(gm: fx.GraphModule) -> set[fx.Node]:
    dep: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder" or any(i in dep for i in n.all_input_nodes):
            dep.add(n)
    return dep


def graph_cost(gm: fx.GraphModule, example_inputs: Sequence[Any] = (), target: Roofline | None = None,
               symbolic: bool = True) -> CostTable:
    """The cost table of a traced graph module (``node.meta["val"]`` filled).

    Args:
        gm: the graph module.
        example_inputs: the inputs it was traced with (placeholder order).
        target: default target for ``CostTable.time``.
        symbolic: try symbolic batch/sequence sizes (falls back to linear-in-B when the graph is specialized).
    """
    from fxopt.trace import _flat_inputs

    inputs = _flat_inputs(gm, tuple(example_inputs)) if example_inputs else []
    bindings: dict[str, int] = {}
    for x in inputs:
        if isinstance(x, torch.Tensor):
            for d, sym in _dynamic_dims(x).items():
                bindings.setdefault(sym.name, int(x.shape[d]))
    values: dict[fx.Node, Any] | None = None
    renames: dict[Any, sympy.Symbol] = {}
    ok = False
    info = gm.meta.get("fxopt", {}).get("trace") if isinstance(gm.meta.get("fxopt"), dict) else None
    symbolic = symbolic and getattr(info, "frontend", "fx") != "export"  # export graphs have baked-in sizes
    if symbolic and inputs:
        try:
            values, renames = symbolic_values(gm, inputs)
            ok = True
        except Exception as exc:  # specialized graphs fail in many ways; all mean "use the example shapes"
            log.debug("symbolic shapes failed for %s: %s", type(gm).__name__, exc)
    rows = _rows(gm, values, renames, bindings) if ok else None
    example = _rows(gm, None, {}, bindings)
    assert example is not None, "only symbolic values can leave a stray symbol"
    if rows is not None and not _agrees(rows, example, bindings):
        log.debug("symbolic costs disagree with the example shapes; using the example shapes")
        rows = None
    if rows is None:
        rows = example
        ok = False
        bindings = {k: v for k, v in bindings.items() if k == "B"}
    return CostTable(tuple(rows), bindings, ok, target)


def _rows(gm: fx.GraphModule, values: Mapping[fx.Node, Any] | None, renames: Mapping[Any, sympy.Symbol],
          bindings: Mapping[str, int]) -> list[NodeCost] | None:
    """Node costs; symbolic when ``values`` are given (None if a stray symbol is left), else linear in B."""
    sizes = _SymbolicSizes(gm, values)
    dep = _depends_on_inputs(gm)
    batch0 = bindings.get("B", 1)
    rows = []
    for n in gm.graph.nodes:
        if n.op not in ("call_module", "call_function", "call_method"):
            continue
        row = node_cost(REGISTRY.view(n, gm), sizes)
        if values is not None:
            flops, nbytes = _rename(row.flops, renames), _rename(row.bytes, renames)
            if not (flops.free_symbols | nbytes.free_symbols) <= {B, S}:
                return None
            row = NodeCost(row.node, row.kind, row.category, flops, nbytes, row.dtype)
        elif n in dep and "B" in bindings:
            row = NodeCost(row.node, row.kind, row.category, row.flops * B / batch0, row.bytes * B / batch0,
                           row.dtype)
        rows.append(row)
    return rows


def _agrees(symbolic: list[NodeCost], concrete: list[NodeCost], bindings: Mapping[str, int]) -> bool:
    subs = {sym: bindings[sym.name] for sym in (B, S) if sym.name in bindings}
    a = float(sympy.Add(*[r.flops for r in symbolic]).xreplace(subs))
    b = float(sympy.Add(*[r.flops for r in concrete]).xreplace(subs))
    return abs(a - b) <= 1e-6 * max(abs(b), 1.0)


def _rename(expr: sympy.Expr, renames: Mapping[Any, sympy.Symbol]) -> sympy.Expr:
    if not renames or not expr.free_symbols:
        return expr
    return sympy.expand(expr.xreplace(dict(renames)))
