"""H2SPG on the real erasing super-networks never selects an invalid set (OTOv3 Figure 2, Table 4)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from otoir.analyses.groups import group_is_zero, set_tensor_array  # noqa: E402
from otoir.analyses.validity import is_valid, reachable_counts  # noqa: E402
from otoir.frontends.torch_export import export_torch  # noqa: E402
from otoir.optim.from_groups import groups_for, make_numpy_stepper  # noqa: E402
from otoir.zoo import build  # noqa: E402


@pytest.fixture(scope="module", params=["demosupnet", "regnet_style"])
def supernet(request):
    kw = {"width": 0.125} if request.param == "demosupnet" else {}
    module, x = build(request.param, **kw)
    model = export_torch(module, x)
    return request.param, model, groups_for(model, "gezig")


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_h2spg_zero_set_is_valid_and_exact(supernet, fraction):
    name, model, groups = supernet
    k = int(np.floor(fraction * len(groups) + 1e-9))
    most = int(np.flatnonzero(reachable_counts(groups)).max())
    if k > most:  # no valid set that large exists: refused up front, with the reachable target
        with pytest.raises(ValueError, match=f"at most {most} can be erased"):
            make_numpy_stepper("h2spg", model, groups, target_sparsity=fraction)
        return
    stepper = make_numpy_stepper("h2spg", model, groups, lr=0.05, momentum=0.9, target_sparsity=fraction,
                                 warmup_steps=3, projection_steps=3)
    from otoir.analyses.vertices import VertexClasses
    from otoir.infra.analysis import AnalysisManager

    trainable = AnalysisManager(model).get(VertexClasses).trainable
    params = {n: np.array(v.const_value.numpy(), dtype=np.float32) for n, v in trainable.items()}
    rng = np.random.default_rng(1)
    # Gradients point every group towards the origin, the "only path" ones hardest: a top-K
    # choice without the hierarchy check would zero parents and all their alternatives.
    for _ in range(6):
        grads = {n: (0.5 * p + 0.01 * rng.standard_normal(p.shape)).astype(np.float32) for n, p in params.items()}
        stepper.step(params, grads)
    for n, arr in params.items():
        set_tensor_array(model, n, arr)
    zero = [g for g in groups if group_is_zero(model, g)]
    assert len(zero) == k, name
    assert is_valid(zero, groups.checker), f"{name}: H2SPG produced an invalid sub-network at {fraction}"
