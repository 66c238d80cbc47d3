"""fxopt.visualize: groups coloured and named, frozen dims and barriers marked, repeated blocks collapsed,
before/after marks, and the DOT fallback when Graphviz is missing."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torch.fx as fx
from torch import nn

import fxopt
from fxopt.viz import NodeChange, assign_colours, stable_colour, visualize
from fxopt.viz import render as render_module
from fxopt.viz.colors import HUES, _probe

needs_dot = pytest.mark.skipif(render_module.dot_executable() is None, reason="Graphviz `dot` is not installed")


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        z = self.conv3(torch.relu(self.conv2(y))) + y
        return self.fc(z.mean((2, 3)))


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class Stack(nn.Module):
    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(8) for _ in range(n))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class Flipper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.flip(self.a(x), dims=(1,)))


@pytest.fixture(scope="module")
def residual() -> fxopt.Analysis:
    torch.manual_seed(0)
    return fxopt.analyze(Residual().eval(), torch.randn(1, 3, 8, 8))


def test_visualize_residual_every_group_coloured_and_named_once(residual: fxopt.Analysis) -> None:
    picture = visualize(residual)
    assert residual.groups, "the fixture must have groups"
    for g in residual.groups:
        fill = picture.graph.colour_of(g.id).fill
        assert fill in picture.dot, f"group {g.id} has no coloured node"
        assert sum(f"group {g.id}:" in n for node in picture.graph.nodes.values() for n in node.notes) == 1
        assert any(e.id == g.id for e in picture.graph.legend)
    conv1 = picture.graph.nodes["conv1"]
    assert conv1.groups and conv1.shape == "1×8×8×8" and conv1.op.startswith("Conv2d 3→8")
    assert picture.graph.nodes["add"].groups == picture.graph.nodes["conv1"].groups  # residual: one group


def test_visualize_same_input_same_dot_text(residual: fxopt.Analysis) -> None:
    again = fxopt.analyze(Residual().eval(), torch.randn(1, 3, 8, 8))
    assert visualize(residual).dot == visualize(again).dot


def test_stable_colour_is_a_fixed_function_of_the_id() -> None:
    assert stable_colour("conv1.weight/0") == stable_colour("conv1.weight/0")
    assert stable_colour("conv1.weight/0").fill == "#e36363"  # sha256-based: the same on every machine
    assert stable_colour("conv1.weight/0") != stable_colour("conv2.weight/0")


def test_assign_colours_neighbours_with_the_same_hash_slot_get_unlike_colours() -> None:
    first = _probe("g0")[0]
    twin = next(f"g{i}" for i in range(1, 10_000) if _probe(f"g{i}")[0] == first)
    alone = assign_colours(["g0", twin])
    assert alone["g0"] != alone[twin]  # not neighbours, but one picture: no two groups share a colour
    paired = assign_colours(["g0", twin], {"g0": [twin], twin: ["g0"]})
    assert paired["g0"] != paired[twin]
    assert paired[min("g0", twin)] == stable_colour(min("g0", twin))  # the first in id order keeps its own
    assert HUES >= 12


def test_visualize_frozen_output_dims_marked_with_reason(residual: fxopt.Analysis) -> None:
    graph = visualize(residual).graph
    fc = graph.nodes["fc"]
    assert "frozen" in fc.marks
    frozen = residual.frozen[0]
    assert any(n.startswith(f"frozen {frozen.id}: ") and frozen.reason in n for n in fc.notes)
    assert any(n == f"freezes {frozen.id}" for n in graph.nodes[frozen.node].notes)
    assert "dashed" in visualize(residual).dot


def test_visualize_op_without_rule_is_a_marked_barrier() -> None:
    analysis = fxopt.analyze(Flipper(), torch.randn(2, 4))
    assert analysis.barriers, "torch.flip must have no channel rule for this test"
    graph = visualize(analysis).graph
    node = graph.nodes[analysis.barriers[0].node.name]
    assert "barrier" in node.marks and any(n.startswith("no rule: ") for n in node.notes)


def test_visualize_collapse_repeated_blocks_keeps_every_group() -> None:
    analysis = fxopt.analyze(Stack(4), torch.randn(2, 8))
    full = visualize(analysis, collapse=False).graph
    small = visualize(analysis, collapse=True).graph
    boxes = [n for n in small.nodes.values() if n.kind == "block"]
    assert [b.name for b in boxes] == ["block:blocks.1", "block:blocks.2", "block:blocks.3"]
    assert all("like blocks.0" in b.op for b in boxes)
    assert len(small.nodes) < len(full.nodes)
    text = visualize(analysis, collapse=True).dot
    for g in analysis.groups:
        assert f"group {g.id}" in text
    assert visualize(analysis, collapse="auto", max_nodes=5).graph.nodes.keys() == small.nodes.keys()
    assert visualize(analysis, collapse="auto").graph.nodes.keys() == full.nodes.keys()


def test_visualize_before_after_marks_resized_removed_and_fused(residual: fxopt.Analysis) -> None:
    group = next(g for g in residual.groups if g.size == 6)
    small = fxopt.prune_groups(residual, {group: range(3)})
    after = fx.GraphModule(small, small.graph)
    relu = next(n for n in after.graph.nodes if n.name == "relu_1")
    relu.replace_all_uses_with(relu.args[0])
    after.graph.erase_node(relu)
    after.recompile()
    picture = visualize(after, before=residual.gm, analysis=residual,
                        changes={"conv2": NodeChange("fused", "relu folded away")})
    nodes = picture.graph.nodes
    assert {"fused", "resized"} <= nodes["conv2"].marks and "resized" not in nodes["conv3"].marks
    assert nodes["conv2"].shape == "1×6×8×8 → 1×3×8×8"
    assert "fused" in nodes["conv2"].marks and nodes["conv2"].notes[0] == "relu folded away"
    assert "removed" in nodes["relu_1"].marks
    assert any(e.removed for e in picture.graph.edges)
    assert "parameters" in " ".join(picture.graph.notes)


def test_visualize_plain_graphmodule_without_shapes() -> None:
    gm = fx.symbolic_trace(Residual())
    picture = visualize(gm)
    assert set(picture.graph.nodes) == {n.name for n in gm.graph.nodes if n.op != "get_attr"}
    assert not picture.graph.legend


def test_visualize_module_without_inputs_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="example_inputs"):
        visualize(Residual())


def test_visualize_without_graphviz_writes_dot_and_says_how_to_install(
        residual: fxopt.Analysis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_module, "dot_executable", lambda: None)
    picture = visualize(residual, tmp_path / "graph.svg")
    assert not picture.rendered
    assert picture.path == tmp_path / "graph.dot" and picture.path.read_text() == picture.dot
    assert picture.message is not None and "apt-get install graphviz" in picture.message
    assert not (tmp_path / "graph.svg").exists()


def test_visualize_unknown_format_is_a_value_error(residual: fxopt.Analysis, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jpg"):
        visualize(residual, tmp_path / "graph.jpg")


@needs_dot
def test_visualize_svg_is_valid_and_names_every_group(residual: fxopt.Analysis, tmp_path: Path) -> None:
    picture = visualize(residual, tmp_path / "graph.svg")
    assert picture.rendered and picture.path == tmp_path / "graph.svg"
    root = ET.parse(picture.path).getroot()
    assert root.tag.endswith("svg")
    text = " ".join(t for t in root.itertext())
    for g in residual.groups:
        assert g.id in text
    fills = {el.get("fill") for el in root.iter() if el.get("fill")}
    for g in residual.groups:
        assert picture.graph.colour_of(g.id).fill in fills


@needs_dot
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_visualize_png_and_pdf(residual: fxopt.Analysis, tmp_path: Path, suffix: str, magic: bytes) -> None:
    picture = visualize(residual, tmp_path / f"graph{suffix}")
    assert picture.rendered and picture.path.read_bytes().startswith(magic)


@needs_dot
def test_visualize_llama_gqa_svg_names_every_group_and_stripes_heads(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    analysis = fxopt.analyze(model, torch.randint(0, 1000, (1, 16)))
    picture = visualize(analysis, tmp_path / "llama.svg", title="llama")
    text = " ".join(ET.parse(picture.path).getroot().itertext())
    assert {"head", "head_dim"} <= {g.granularity for g in analysis.groups}
    for g in analysis.groups:
        assert g.id in text
    assert "striped" in picture.dot  # q_proj's output carries heads, repeats and head_dim at once
    assert any("(q_proj)" in n.op for n in picture.graph.nodes.values())


def test_assign_colours_gives_every_group_of_a_picture_its_own_colour() -> None:
    """D2: two groups of resnet18's picture (not neighbours) shared one hash colour in the legend."""
    ids = [f"layer{i}.conv{j}.weight/0" for i in range(6) for j in range(8)]  # 48 groups, 48 slots
    colours = assign_colours(ids)
    assert len({c.fill for c in colours.values()}) == len(ids)


def test_visualize_resnet18_legend_has_distinct_colours_and_short_lines() -> None:
    """D2 and D3: no two legend swatches alike, and no line of the heading so long that it is cut off."""
    import re

    from fxopt.testing.zoo import get_entry

    entry = get_entry("torchvision:resnet18")
    picture = visualize(fxopt.analyze(entry.build(), entry.inputs()))
    fills = [e.colour.fill for e in picture.graph.legend]
    assert len(fills) == 12 and len(set(fills)) == 12
    graph_line = next(line for line in picture.dot.splitlines() if line.lstrip().startswith("graph ["))
    label = graph_line[graph_line.index("label=<") + len("label=<"):]
    lines = [re.sub(r"<[^>]+>", "", part).strip() for part in re.split(r"<BR/>|</TD>", label)]
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)


def test_picture_repr_is_short_and_small_models_count_plainly(residual: fxopt.Analysis) -> None:
    """D15: a Picture's repr dumped the DOT source; small models showed "0.00M parameters"."""
    picture = visualize(residual)
    assert repr(picture) == "Picture(path=None, rendered=False, message=None)"
    params = sum(p.numel() for p in residual.gm.parameters())
    assert f"{params:,} parameters" in picture.graph.title and "0.00M" not in picture.dot
