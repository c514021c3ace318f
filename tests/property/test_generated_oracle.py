"""Property: on generated networks, erasing and pruning give the oracle or a reasoned refusal.

The networks come from :mod:`otoir.zoo.netgen` (torch-free: concats along the channel, height,
width, feature and batch axes, shared weights, a module applied twice, extra graph outputs,
residual adds, pooling, Flatten -> Gemm/MatMul heads). For each, :func:`otoir.tools.oracle_sweep.
run_case` zeroes a random valid set of groups and constructs the sub-network; the outcome must be
``exact`` (same outputs as the zeroed full network in ONNX Runtime, within 1e-4 of the output
scale) or ``refused`` with a reason — never a mismatch, an unloadable model or a crash.

Seeds are fixed (deterministic and bounded: ~100 small networks per mode). ``tools/oracle_sweep.py
--count 1000`` runs the same check at scale.
"""

from __future__ import annotations

import pytest

from otoir.tools.oracle_sweep import CaseResult, main, run_case, summarize
from otoir.zoo.netgen import FEATURES, generate

SEEDS = range(0, 100)
#: Networks (beyond SEEDS) on which erasing wrote an unloadable model (103, 130, 156, 166) or
#: crashed with an IndexError in zero-groups / eliminate-dead-branches (102, 104) before Concat
#: was a joint only along the channel axis (issue 10); 30 of SEEDS failed too. The seeds name
#: networks of this version of netgen: re-derive them when the generator changes.
ERASE_REGRESSIONS = [102, 103, 104, 130, 156, 166]

_SHARED = frozenset({"shared-weight", "reused-module"})


def _check(r: CaseResult) -> None:
    assert r.ok, f"seed={r.seed} mode={r.mode} features={sorted(r.features)}: {r.outcome}: {r.detail}"
    if r.outcome == "refused":
        assert r.detail.strip(), "a refusal must say why"


@pytest.mark.parametrize("seed", [*SEEDS, *ERASE_REGRESSIONS])
def test_erase_oracle(seed):
    _check(run_case(seed, "erase"))


def _prune_seeds(shared: bool) -> list[int]:
    return [s for s in SEEDS if bool(generate(s).features & _SHARED) is shared]


@pytest.mark.parametrize("seed", _prune_seeds(shared=False))
def test_prune_oracle(seed):
    _check(run_case(seed, "prune"))


# Shared weights in prune mode are the business of the prune-shared work (issue 10 item 2): kept
# apart so that this file fails loudly only for its own scope. No failure was found on these
# seeds (nor in a 1,000-network sweep), so the test is not marked xfail.
@pytest.mark.parametrize("seed", _prune_seeds(shared=True))
def test_prune_oracle_shared_weights(seed):
    _check(run_case(seed, "prune"))


def test_erase_removes_something():
    # The property is not vacuous: most networks lose parameters.
    results = [run_case(s, "erase") for s in range(0, 30)]
    assert sum(1 for r in results if r.outcome == "exact" and r.removed > 0) >= 10


def test_generator_is_deterministic_and_covers_every_feature():
    assert generate(5).proto.SerializeToString() == generate(5).proto.SerializeToString()
    assert generate(5).proto.SerializeToString() != generate(6).proto.SerializeToString()
    seen = set()
    for s in SEEDS:
        seen |= generate(s).features
    assert seen == set(FEATURES)


def test_oracle_detects_wrong_and_unloadable_models(monkeypatch):
    # The harness itself: a construction that slices the wrong channels is a mismatch, one that
    # forgets to slice the consumers is unloadable.
    import numpy as np

    import otoir.surgery.erase as erase

    seed = next(s for s in SEEDS if "concat-channel" in generate(s).features
                and run_case(s, "erase").removed > 0 and _erases_a_concat_input(s))
    real = erase.apply_channel_plan

    def shifted(model, plan):
        for k, (name, axis, idx, tr) in enumerate(plan.slices):
            n = model.graph.initializers[name].const_value.shape.dims[axis]
            plan.slices[k] = (name, axis, tuple(int(i) for i in (np.asarray(idx) + 1) % n), tr)
        return real(model, plan)

    monkeypatch.setattr(erase, "apply_channel_plan", shifted)
    assert run_case(seed, "erase").outcome == "mismatch"
    monkeypatch.setattr(erase, "apply_channel_plan", lambda model, plan: 0)
    assert run_case(seed, "erase").outcome == "unloadable"


def _erases_a_concat_input(seed: int) -> bool:
    import otoir.surgery.erase as erase

    calls = []
    real = erase.apply_channel_plan

    def spy(model, plan):
        calls.append(len(plan.slices))
        return real(model, plan)

    erase.apply_channel_plan = spy
    try:
        run_case(seed, "erase")
    finally:
        erase.apply_channel_plan = real
    return any(calls)


def test_sweep_tool(capsys):
    assert main(["--count", "3", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["mode", "cases", "exact", "refused", "mismatch", "unloadable", "crash",
                                           "removed>0"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["erase"][1] == rows["prune"][1] == "3"
    assert "6 cases" in out
    assert "erase: " in out and "segments/groups kept with a reason" in out
    bad = CaseResult(1, "erase", "mismatch", "max relative difference 0.5")
    assert "MISMATCH seed=1 mode=erase" in summarize([bad])
