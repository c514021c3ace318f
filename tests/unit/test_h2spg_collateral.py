"""H2SPG's selection counts the groups a candidate leaves dead (collateral) toward K.

Zeroing a GeZIG can cut a whole branch off every graph output (DemoSupNet's Conv6: the
Conv1/Concat side then feeds nothing); eliminate-dead-branches removes that branch too, so its
groups are removed in effect and must count among the K removed groups.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

import otoir  # noqa: E402
from otoir.analyses.gezig import GeZIGPartition  # noqa: E402
from otoir.analyses.validity import reachable_counts, select_redundant  # noqa: E402
from otoir.infra.analysis import AnalysisManager  # noqa: E402
from otoir.testing import assert_same_outputs  # noqa: E402


class _TwoSided(torch.nn.Module):
    """stem -> {b1, b2} -> Concat -> a (no BN) ; stem -> c ; a + c -> head.

    Zeroing ``a`` leaves b1, b2 and the Concat without any path to the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = torch.nn.Conv2d(8, 4, 3, padding=1)
        self.b2 = torch.nn.Conv2d(8, 4, 1)
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        cat = torch.cat([torch.relu(self.b1(s)), torch.relu(self.b2(s))], dim=1)
        y = self.a(cat) + self.c(s)
        return self.head(torch.relu(y).mean(dim=(2, 3)))


def _partition(module, x) -> tuple[ir.Model, GeZIGPartition]:
    m = otoir.load(module, x)
    return m, AnalysisManager(m).get(GeZIGPartition)


def _index(p: GeZIGPartition, prefix: str) -> int:
    return next(i for i, g in enumerate(p.groups) if g.meta["params"][0].startswith(prefix + "."))


def _removed(p: GeZIGPartition, sel) -> set[int]:
    """Groups removed in effect: the selected ones and every group left without a path to an output."""
    c = p.checker
    z = c.segments_of([p.groups[i] for i in sel])
    zero = z | c.interior(z)
    dead = c.dead(zero) - c.dead_before
    return set(sel) | {j for j, g in enumerate(p.groups)
                       if all(e in dead or e in zero for e in c.segments_of([g]))}


@pytest.fixture(scope="module")
def two_sided():
    torch.manual_seed(0)
    return _partition(_TwoSided().eval(), torch.randn(1, 3, 8, 8))


def test_zeroing_a_kills_the_concat_side(two_sided):
    _, p = two_sided
    ia, ib1, ib2 = _index(p, "a"), _index(p, "b1"), _index(p, "b2")
    c = p.checker
    zero = c.segments_of([p.groups[ia]])
    dead_or_zero = c.dead(zero) | zero | c.interior(zero)
    assert all(e in dead_or_zero for i in (ib1, ib2) for e in c.segments_of([p.groups[i]]))
    assert not any(e in dead_or_zero for e in c.segments_of([p.groups[_index(p, "c")]]))
    # the dead Concat left without inputs does not make the set invalid
    assert c.check([p.groups[i] for i in (ia, ib1, ib2)]).valid


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_selection_counts_collateral_and_is_exact(two_sided, k):
    _, p = two_sided
    ia, ib1, ib2 = _index(p, "a"), _index(p, "b1"), _index(p, "b2")
    scores = np.zeros(len(p.groups))
    scores[ia] = 1.0  # "a" is the most redundant, as DemoSupNet's Conv6 by its magnitude term
    sel = select_redundant(p.groups, scores, k)
    most = int(np.flatnonzero(reachable_counts(p.groups)).max())
    assert len(sel) == min(k, most)
    assert len(set(sel)) == len(sel)
    assert _removed(p, sel) == set(sel)  # nothing beyond the selected set dies
    assert p.checker.check([p.groups[i] for i in sel]).valid
    if k >= 3:  # a's collateral (b1, b2) fits the budget: selected together
        assert most == 3 and {ia, ib1, ib2} <= set(sel)
    else:
        assert ia not in sel


def test_oracle_after_eliminate_dead_branches(two_sided):
    m, p = two_sided
    ia = _index(p, "a")
    scores = np.zeros(len(p.groups))
    scores[ia] = 1.0
    sel = select_redundant(p.groups, scores, 3)
    ids = [p.groups[i].id for i in sel]
    m = ir.from_proto(ir.to_proto(m))
    otoir.PassManager.from_text(f"zero-groups{{ids={','.join(ids)}}}").run(m)
    zeroed = ir.from_proto(ir.to_proto(m))
    otoir.PassManager.from_text("eliminate-dead-branches").run(m)
    assert not any(k.startswith(("a.", "b1.", "b2.")) for k in m.graph.initializers)
    assert any(k.startswith("c.") for k in m.graph.initializers)
    assert_same_outputs(zeroed, m)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_demosupnet_conv6_favoured_removes_at_most_k(k):
    import otoir.zoo as zoo

    module, x = zoo.build("demosupnet", width=0.25, relu=True)
    _, p = _partition(module, x)
    i6 = _index(p, "conv6")
    scores = np.zeros(len(p.groups))
    scores[i6] = 1.0
    sel = select_redundant(p.groups, scores, k)
    assert len(sel) == k
    assert len(_removed(p, sel)) == k  # before: Conv6 alone removed Conv2/3/4 with it
    assert (i6 in sel) == (k >= 4)
