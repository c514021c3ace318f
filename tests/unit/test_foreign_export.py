"""An ONNX file from another framework's converter (tf2onnx style, built by hand: no converter is
installed): NHWC input behind a Transpose, Conv with bias, a Dense layer as MatMul+Add, a constant
Reshape target, '/' and ':' in names, initializers listed as graph inputs, ir_version 7, opset 13."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import otoir
from otoir.tools.otoir_opt import main

P = "StatefulPartitionedCall/model/"


def tf2onnx_style(path) -> None:
    rng = np.random.default_rng(0)

    def init(name, arr, dtype=np.float32):
        return numpy_helper.from_array(np.asarray(arr).astype(dtype), P + name)

    inits = [init("conv2d/Conv2D/ReadVariableOp:0", rng.standard_normal((8, 3, 3, 3)) * 0.3),
             init("conv2d/BiasAdd/ReadVariableOp:0", rng.standard_normal(8) * 0.1),
             init("conv2d_1/Conv2D/ReadVariableOp:0", rng.standard_normal((8, 8, 3, 3)) * 0.2),
             init("conv2d_1/BiasAdd/ReadVariableOp:0", rng.standard_normal(8) * 0.1),
             init("dense/MatMul/ReadVariableOp:0", rng.standard_normal((8, 4)) * 0.3),
             init("dense/BiasAdd/ReadVariableOp:0", rng.standard_normal(4) * 0.1),
             init("flatten/Const:0", [-1, 8], np.int64)]
    w = [t.name for t in inits]
    node = helper.make_node
    nodes = [
        node("Transpose", ["input_1"], [P + "t:0"], perm=[0, 3, 1, 2], name=P + "conv2d/Conv2D__6"),
        node("Conv", [P + "t:0", w[0], w[1]], [P + "c1:0"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], name=P + "c1"),
        node("Relu", [P + "c1:0"], [P + "r1:0"], name=P + "r1"),
        node("Conv", [P + "r1:0", w[2], w[3]], [P + "c2:0"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], name=P + "c2"),
        node("Relu", [P + "c2:0"], [P + "r2:0"], name=P + "r2"),
        node("GlobalAveragePool", [P + "r2:0"], [P + "gap:0"], name=P + "gap"),
        node("Reshape", [P + "gap:0", w[6]], [P + "flat:0"], name=P + "flatten/Reshape"),
        node("MatMul", [P + "flat:0", w[4]], [P + "mm:0"], name=P + "dense/MatMul"),
        node("Add", [P + "mm:0", w[5]], ["dense"], name=P + "dense/BiasAdd"),
    ]
    inputs = [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__12", 8, 8, 3])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]  # as inputs too
    graph = helper.make_graph(nodes, "tf2onnx", inputs,
                              [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__13", 4])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    d = tmp_path_factory.mktemp("foreign")
    tf2onnx_style(d / "tf.onnx")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((64, 8, 8, 3)).astype(np.float32), rng.integers(0, 4, 64)
    np.savez(d / "d.npz", inputs=x[:48], labels=y[:48], val_inputs=x[48:], val_labels=y[48:])
    return d / "tf.onnx", d / "d.npz"


def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), err.getvalue()


def test_initializer_inputs_become_constants(foreign, tmp_path):
    src, _ = foreign
    code, err = cli(str(src), "-p", "normalize-export", "-q", "-o", str(tmp_path / "n.onnx"))
    assert code == 0, err
    model = otoir.load(tmp_path / "n.onnx")
    assert [v.name for v in model.graph.inputs] == ["input_1"]
    assert len(model.graph.initializers) == 7


def test_groups_found_and_prune_verifies(foreign, tmp_path):
    src, data = foreign
    code, err = cli(str(src), "-p", "normalize-export,partition-zig,print-groups", "-q", "-o", str(tmp_path / "g.onnx"))
    assert code == 0, err
    assert "16 prunable" in err  # both convolutions' 8 channels; without the pass the Reshape target is unknown
    code, err = cli(str(src), "-p", f"otoir-prune{{data={data} epochs=2 batch=8 target-sparsity=0.5 quiet=true}}",
                    "--verify", "-q", "-o", str(tmp_path / "o.onnx"))
    assert code == 0, err
    out = otoir.load(tmp_path / "o.onnx")
    kept = out.graph.initializers[P + "conv2d/Conv2D/ReadVariableOp:0"].shape.dims[0]
    kept += out.graph.initializers[P + "conv2d_1/Conv2D/ReadVariableOp:0"].shape.dims[0]
    assert kept == 16 - 8  # exactly half of the 16 channel groups removed
