"""GroupLayout: construction, validation, gather/scatter and segment sums."""

from __future__ import annotations

import numpy as np
import pytest

from otoir.optim import GroupLayout

SHAPES = {"conv.weight": (6, 3, 2, 2), "bn.weight": (6,), "fc.weight": (4, 6), "gez": (5, 2), "free": (3,)}


def _groups():
    # channel groups: conv rows + bn entries; fc columns (axis 1) in separate groups; a GeZIG
    g = [[("conv.weight", 0, [c]), ("bn.weight", 0, [c])] for c in range(6)]
    g += [[("fc.weight", 1, [0, 1])], [("fc.weight", 1, [4])]]
    g += [[("gez", None, None)]]
    return g


def _direct_members(arrays):
    """Per-group element lists built with explicit loops (the reference)."""
    out = []
    for c in range(6):
        out.append(np.concatenate([arrays["conv.weight"][c].ravel(), arrays["bn.weight"][[c]]]))
    out.append(arrays["fc.weight"][:, [0, 1]].T.ravel())
    out.append(arrays["fc.weight"][:, [4]].T.ravel())
    out.append(arrays["gez"].ravel())
    return out


def _arrays(rng):
    return {k: rng.normal(size=s) for k, s in SHAPES.items()}


def test_gather_matches_per_group_reference():
    rng = np.random.default_rng(0)
    lay = GroupLayout.from_slices(_groups(), SHAPES)
    arrays = _arrays(rng)
    flat = lay.gather(arrays)
    ref = _direct_members(arrays)
    assert lay.num_groups == 9
    assert list(lay.group_numel) == [len(r) for r in ref]
    for g, r in enumerate(ref):
        got = flat[lay.group_ptr[g] : lay.group_ptr[g + 1]]
        assert np.allclose(np.sort(got), np.sort(r))
    assert np.all(np.diff(lay.segment_ids) >= 0)
    sums = lay.segment_sum(flat)
    assert np.allclose(sums, [r.sum() for r in ref])
    assert "free" not in lay.names


def test_scatter_round_trip_and_ungrouped_untouched():
    rng = np.random.default_rng(1)
    lay = GroupLayout.from_slices(_groups(), SHAPES)
    arrays = _arrays(rng)
    before = {k: v.copy() for k, v in arrays.items()}
    flat = lay.gather(arrays)
    lay.scatter(flat * 0 + 7.0, arrays)
    assert np.all(arrays["conv.weight"] == 7.0)
    assert np.all(arrays["fc.weight"][:, [0, 1, 4]] == 7.0)
    assert np.array_equal(arrays["fc.weight"][:, [2, 3, 5]], before["fc.weight"][:, [2, 3, 5]])
    lay.scatter(flat, arrays)
    for k in SHAPES:
        if k != "free":
            assert np.array_equal(arrays[k], before[k])


def test_torch_gather_scatter_agree_with_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    lay = GroupLayout.from_slices(_groups(), SHAPES)
    arrays = _arrays(rng)
    tarr = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    assert np.allclose(lay.gather(tarr).numpy(), lay.gather(arrays))
    assert np.allclose(lay.segment_sum(lay.gather(tarr)).numpy(), lay.segment_sum(lay.gather(arrays)))
    lay.scatter(torch.zeros(int(lay.group_numel.sum()), dtype=torch.float64), tarr)
    assert float(tarr["conv.weight"].abs().sum()) == 0.0


def test_row_view_of_axis_one_tensor():
    lay = GroupLayout.from_slices(_groups(), SHAPES)
    fc = lay.rows_of("fc.weight")
    assert (fc.outer, fc.rows, fc.inner) == (4, 6, 1)
    rg = lay.tensor_row_groups(lay.tensor_index("fc.weight"))
    assert list(rg) == [6, 6, -1, -1, 7, -1]
    assert lay.rows_of("gez").view_shape == (1, 1, 10)


@pytest.mark.parametrize(
    "groups, match",
    [
        ([[("conv.weight", 0, [0])], [("conv.weight", 1, [0])]], "one axis"),
        ([[("conv.weight", 0, [0, 1])], [("conv.weight", 0, [1])]], "claimed twice"),
        ([[("conv.weight", 0, [6])]], "out of range"),
        ([[("nope", 0, [0])]], "unknown tensor"),
        ([[("gez", None, [0])]], "axis=None"),
        ([[("conv.weight", 0, [])]], "no elements"),
    ],
)
def test_invalid_descriptions_are_rejected(groups, match):
    with pytest.raises(ValueError, match=match):
        GroupLayout.from_slices(groups, SHAPES)


def test_from_tensors_and_negative_axis():
    lay = GroupLayout.from_tensors([["gez", "free"], ["bn.weight"]], SHAPES)
    assert list(lay.group_numel) == [13, 6]
    lay2 = GroupLayout.from_slices([[("fc.weight", -1, [-1])]], SHAPES)
    assert lay2.rows_of("fc.weight").axis == 1
    assert list(lay2.tensor_row_groups(0)) == [-1] * 5 + [0]


def test_analysis_groups_are_refused_with_the_function_to_use():
    from otoir.analyses.groups import Group, TensorSlice

    g = Group("zig:0", "zig", (TensorSlice("w", 0, (0,)),))
    with pytest.raises(TypeError, match="analysis Group.*layout_from_groups"):
        GroupLayout.from_slices([g], {"w": (4, 3)})
