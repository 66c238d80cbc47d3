"""The dimension table: union of equal dims, refinement into row-major products, freezing."""

from __future__ import annotations

from fxopt.ops.dims import DimTable


def test_unify_refines_a_flat_dim_into_heads_and_head_dim():
    t = DimTable()
    flat, heads, dim = t.new(512), t.new(8), t.new(64)
    assert t.unify([flat], [heads, dim])
    assert [t.size[a] for a in t.atoms(flat)] == [8, 64]
    assert t.atoms(flat) == [t.find(heads), t.find(dim)]


def test_unify_with_sizes_that_do_not_divide_fails():
    t = DimTable()
    a, b, c = t.new(6), t.new(4), t.new(6)
    assert not t.unify([a, t.new(4)], [b, c])  # 6 x 4 vs 4 x 6: 6 and 4 do not divide
    assert not t.unify([t.new(6)], [t.new(5)])  # different totals


def test_unify_of_equal_atoms_is_a_union():
    t = DimTable()
    a, b = t.new(8), t.new(8)
    assert t.unify([a], [b])
    assert t.find(a) == t.find(b)
    assert t.atoms(a) == t.atoms(b)


def test_size_one_dims_are_not_atoms():
    t = DimTable()
    flat, one, dim = t.new(16), t.new(1), t.new(16)
    assert t.unify([flat], [one, dim])
    assert t.atoms(flat) == [t.find(dim)]
    assert t.atoms(one) == []


def test_freeze_of_a_product_freezes_its_factors_and_later_refinements_inherit():
    t = DimTable()
    flat, heads, dim = t.new(12), t.new(3), t.new(4)
    t.freeze(flat, "graph output")
    assert t.unify([flat], [heads, dim])
    assert {t.frozen_reason(a) for a in t.atoms(flat)} == {"graph output"}
    assert t.frozen_reason(heads) == "graph output"


def test_freeze_keeps_the_first_reason():
    t = DimTable()
    a = t.new(4)
    t.freeze(a, "first")
    t.freeze(a, "second")
    assert t.frozen_reason(a) == "first"


def test_unfrozen_dim_has_no_reason():
    t = DimTable()
    assert t.frozen_reason(t.new(4)) is None


def test_nested_refinements_agree_from_both_sides():
    t = DimTable()
    x, y = t.new(24), t.new(24)
    assert t.unify([x], [t.new(2), t.new(12)])
    assert t.unify([y], [t.new(6), t.new(4)])
    assert t.unify([x], [y])  # 2 x 12 against 6 x 4 refines both into 2 x 3 x 4
    assert [t.size[a] for a in t.atoms(x)] == [2, 3, 4]
    assert t.atoms(x) == t.atoms(y)
