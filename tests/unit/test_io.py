"""otoir.load / otoir.save: formats, external data, atomicity."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import otoir
import otoir.io as oio
from otoir import runtime
from otoir.errors import InputError

TEXT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N,3,4,4] x) => (float[N,8,4,4] y)
{
  c = Conv <pads=[1,1,1,1]> (x, w, b)
  y = Relu (c)
}
"""


def make_model(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    proto = onnx.parser.parse_model(TEXT)
    model = ir.serde.deserialize_model(proto)
    conv = next(iter(model.graph))
    for i, (name, shape) in enumerate((("w", (8, 3, 3, 3)), ("b", (8,))), start=1):
        v = ir.Value(name=name, const_value=ir.tensor(rng.standard_normal(shape).astype(np.float32), name=name))
        model.graph.register_initializer(v)
        conv.replace_input_with(i, v)
    return model


def run(model_or_path, x):
    return runtime.run_model(model_or_path if isinstance(model_or_path, ir.Model) else str(model_or_path), {"x": x})[0]


X = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)


def test_save_and_load_inline(tmp_path):
    m = make_model()
    path = tmp_path / "m.onnx"
    otoir.save(m, path)
    assert os.listdir(tmp_path) == ["m.onnx"]
    onnx.checker.check_model(str(path), full_check=True)
    back = otoir.load(path)
    np.testing.assert_array_equal(back.graph.initializers["w"].const_value.numpy(), m.graph.initializers["w"].const_value.numpy())
    np.testing.assert_allclose(run(path, X), run(m, X), rtol=0, atol=0)


def test_save_external_data_and_reload(tmp_path):
    m = make_model()
    path = tmp_path / "m.onnx"
    otoir.save(m, path, external_data=True, size_threshold_bytes=0)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    onnx.checker.check_model(str(path), full_check=True)
    back = otoir.load(path)
    # read lazily from the data file (not copied into memory), resolved against the model's directory
    assert isinstance(back.graph.initializers["w"].const_value, ir.LazyTensor)
    np.testing.assert_array_equal(back.graph.initializers["w"].const_value.numpy(), m.graph.initializers["w"].const_value.numpy())
    np.testing.assert_allclose(run(path, X), run(m, X))
    # an external model saved without asking for external data comes back inline
    path2 = tmp_path / "inline.onnx"
    otoir.save(back, path2)
    assert "inline.onnx.data" not in os.listdir(tmp_path)
    proto = onnx.load(str(path2), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    np.testing.assert_allclose(run(path2, X), run(m, X))


def test_over_two_gb_switches_to_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(oio.write, "TWO_GB", 64 * 2**20 + 100)  # the model's ~900 bytes now count as "big"
    m = make_model()
    otoir.save(m, tmp_path / "big.onnx")
    assert "big.onnx.data" in os.listdir(tmp_path)
    with pytest.raises(ValueError, match="exceed 2 GB"):
        otoir.save(m, tmp_path / "inline.onnx", external_data=False)
    assert "inline.onnx" not in os.listdir(tmp_path)


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_save_is_atomic(tmp_path, monkeypatch, exc):
    m = make_model()
    path = tmp_path / "m.onnx"
    otoir.save(m, path)
    before = path.read_bytes()

    def broken(model, p):
        with open(p, "wb") as f:
            f.write(b"partial")
        raise exc

    monkeypatch.setattr(oio.write, "_save_inline", broken)
    with pytest.raises(type(exc)):
        otoir.save(make_model(seed=5), path)
    assert path.read_bytes() == before  # old file intact
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temporary left behind
    with pytest.raises(type(exc)):
        otoir.save(make_model(seed=5), tmp_path / "new.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"]  # no partial new file


def test_load_model_proto_and_ir_model():
    m = make_model()
    proto = ir.to_proto(m)
    back = otoir.load(proto)
    assert [n.op_type for n in back.graph] == ["Conv", "Relu"]
    assert otoir.load(m) is m


def test_graphsurgeon_round_trip():
    pytest.importorskip("onnx_graphsurgeon")
    m = make_model()
    graph = otoir.to_graphsurgeon(m)
    assert [n.op for n in graph.nodes] == ["Conv", "Relu"]
    back = otoir.from_graphsurgeon(graph)
    assert back.ir_version <= 10
    np.testing.assert_allclose(run(back, X), run(m, X))
    # graphsurgeon Graph accepted by load
    assert [n.op_type for n in otoir.load(graph).graph] == ["Conv", "Relu"]


def test_text_round_trip(tmp_path):
    m = make_model()
    path = tmp_path / "m.onnxtxt"
    otoir.save(m, path)
    back = otoir.load(path)
    np.testing.assert_allclose(run(back, X), run(m, X))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no such file"),
        (b"", "not a valid ONNX model"),
        (b"hello, this is not a model\n", "not valid ONNX text"),
        ("truncated", "not a valid ONNX model"),
    ],
)
def test_bad_inputs_raise_input_error(tmp_path, content, fragment):
    path = tmp_path / "bad.onnx"
    if content == "truncated":
        otoir.save(make_model(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as info:
        otoir.load(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_unsupported_object():
    with pytest.raises(InputError, match="cannot load an object of type"):
        otoir.load(42)
