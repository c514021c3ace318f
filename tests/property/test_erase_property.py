"""Property: erasing a random valid set of zero GeZIGs keeps the outputs of the zeroed model.

Networks: the zoo's super-networks, this file's own random conv DAGs (Sum joints, Concat
followed by ReLU), and the zoo's ``random_conv_dag`` drawn by ``otoir.zoo.strategies``
(downsampling, skips, identity inputs of Add, BN-free branches, the Gemm head after a Concat).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import otoir
from otoir.analyses.gezig import GeZIGPartition
from otoir.testing import assert_same_outputs
from otoir.zoo.random_dag import random_conv_dag as zoo_random_conv_dag
from otoir.zoo.strategies import conv_dag_params


def _copy(m: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(m))


def _nparams(m: ir.Model) -> int:
    return sum(v.const_value.size for v in m.graph.initializers.values() if v.const_value is not None)


def _erase_and_compare(model: ir.Model, frac: float, seed: int) -> int:
    m = _copy(model)
    r = otoir.PassManager.from_text(f"zero-groups{{random={frac} seed={seed}}}").run(m)
    zeroed_ids = r.results.get("zeroed", [])
    zeroed = _copy(m)
    before = _nparams(m)
    otoir.PassManager.from_text("eliminate-dead-branches").run(m)
    assert_same_outputs(zeroed, m, seed=seed)
    if zeroed_ids:
        assert _nparams(m) < before
    return len(zeroed_ids)


@functools.cache
def _zoo(name: str) -> ir.Model:
    pytest.importorskip("torch")
    import otoir.zoo as zoo

    widths = {"demosupnet": 0.125, "darts_supernet": 0.5}
    m, x = zoo.build(name, width=widths.get(name, 0.25))
    return otoir.load(m, x)


@pytest.mark.parametrize("name", ["demosupnet", "stackedunets", "darts_supernet", "superresnet", "regnet_style"])
@pytest.mark.parametrize("frac", [0.3, 0.9])
def test_supernets(name, frac):
    n = _erase_and_compare(_zoo(name), frac, seed=1)
    assert n > 0


def random_conv_dag(seed: int, n_blocks: int = 4, c: int = 4, hw: int = 6) -> ir.Model:
    """Random DAG: conv/BN/ReLU/pool branches off earlier values, joined by Add or Concat."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    k = [0]

    def fresh(p: str) -> str:
        k[0] += 1
        return f"{p}{k[0]}"

    def const(a: np.ndarray) -> str:
        name = fresh("p")
        inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    def branch(x: str, cin: int, cout: int) -> str:
        y = x
        if rng.random() < 0.3:
            z = fresh("v")
            nodes.append(helper.make_node(rng.choice(["MaxPool", "AveragePool"]), [y], [z], kernel_shape=[3, 3],
                                          pads=[1, 1, 1, 1], name=fresh("pool")))
            y = z
        z = fresh("v")
        nodes.append(helper.make_node("Conv", [y, const(rng.standard_normal((cout, cin, 3, 3)) * 0.3),
                                               const(rng.standard_normal(cout) * 0.1)], [z], pads=[1, 1, 1, 1],
                                      name=fresh("conv")))
        y = z
        if rng.random() < 0.7:
            z = fresh("v")
            nodes.append(helper.make_node("BatchNormalization", [y, const(1 + 0.1 * rng.standard_normal(cout)),
                                                                 const(0.1 * rng.standard_normal(cout)),
                                                                 const(np.zeros(cout)), const(np.ones(cout))],
                                          [z], name=fresh("bn")))
            y = z
        if rng.random() < 0.5:
            z = fresh("v")
            nodes.append(helper.make_node("Relu", [y], [z], name=fresh("relu")))
            y = z
        return y

    vals = [("x", c)]
    first = branch("x", c, c)
    vals.append((first, c))
    for _ in range(n_blocks):
        src, cs = vals[int(rng.integers(len(vals)))]
        nb = int(rng.integers(2, 4))
        if rng.random() < 0.5:
            outs = [branch(src, cs, c) for _ in range(nb)]
            z = fresh("v")
            nodes.append(helper.make_node("Add" if nb == 2 else "Sum", outs, [z], name=fresh("add")))
            vals.append((z, c))
        else:
            widths = [int(rng.integers(1, 4)) for _ in range(nb)]
            outs = [branch(src, cs, w) for w in widths]
            z = fresh("v")
            nodes.append(helper.make_node("Concat", outs, [z], axis=1, name=fresh("cat")))
            cat = sum(widths)
            if rng.random() < 0.5:
                z2 = fresh("v")
                nodes.append(helper.make_node("Relu", [z], [z2], name=fresh("relu")))
                z = z2
            vals.append((branch(z, cat, c), c))
    last, cl = vals[-1]
    nodes.append(helper.make_node("GlobalAveragePool", [last], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], name="flat"))
    nodes.append(helper.make_node("Gemm", ["f", const(rng.standard_normal((3, cl))), const(np.zeros(3))], ["y"],
                                  transB=1, name="fc"))
    g = helper.make_graph(nodes, "dag", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return ir.serde.deserialize_model(proto)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), frac=st.sampled_from([0.2, 0.5, 0.8, 1.0]))
def test_random_dags(seed, frac):
    model = random_conv_dag(seed)
    p = GeZIGPartition(model, None)
    n = _erase_and_compare(model, frac, seed)
    if p.groups and frac >= 0.5:
        assert n > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=conv_dag_params(max_blocks=6, max_channels=6), frac=st.sampled_from([0.3, 0.7, 1.0]),
       seed=st.integers(0, 1000))
def test_zoo_random_dags(params, frac, seed):
    model = zoo_random_conv_dag(**params)
    p = GeZIGPartition(model, None)
    n = _erase_and_compare(model, frac, seed)
    if p.groups and frac >= 0.7:
        assert n > 0, params
