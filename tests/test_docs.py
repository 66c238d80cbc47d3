"""The generated reference pages match the registries, and the docs link to pages that exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_op_rule_reference_is_up_to_date() -> None:
    gen = _gen_docs()
    page = ROOT / "docs" / "op_rules.md"
    assert page.read_text() == gen.render_op_rules(), "docs/op_rules.md is stale: run python scripts/gen_docs.py"


def test_docs_pass_reference_is_up_to_date() -> None:
    gen = _gen_docs()
    page = ROOT / "docs" / "passes_reference.md"
    assert page.read_text() == gen.render_passes(), "docs/passes_reference.md is stale: run python scripts/gen_docs.py"


def test_docs_op_rule_reference_lists_every_kind_and_op() -> None:
    import fxopt  # noqa: F401
    from fxopt.ops import REGISTRY

    text = (ROOT / "docs" / "op_rules.md").read_text()
    gen = _gen_docs()
    for kind in REGISTRY.rules:
        assert f"\n## {kind}\n" in text
    for op in list(REGISTRY.ops)[::25]:
        assert f"`{gen.op_label(op)}`" in text


def test_docs_relative_links_resolve() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_docs_name_only_functions_that_exist() -> None:
    """D16: docs/passes.md and docs/pruning.md used fxopt.save/fxopt.load before they existed."""
    import fxopt

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.py"))]
    for page in pages:
        for name in set(re.findall(r"(?<![\w.])fxopt\.([a-z_]\w*)\(", page.read_text())):
            assert hasattr(fxopt, name), f"{page.name} calls fxopt.{name}(), which fxopt does not have"
