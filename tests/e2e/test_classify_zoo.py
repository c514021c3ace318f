"""classify-vertices on exported torch networks: every op has a rule, annotations print."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")

import otoir  # noqa: E402
from otoir.analyses.vertices import VertexClasses  # noqa: E402
from otoir.infra import PassManager  # noqa: E402
from otoir.ops import VertexKind  # noqa: E402
from otoir.tools.otoir_opt import main  # noqa: E402
from otoir.zoo import MODELS, build  # noqa: E402

SMALL = {"resnet18_cifar"}  # benchmark-only, too big for a unit test


@pytest.mark.parametrize("name", sorted(set(MODELS) - SMALL))
def test_every_zoo_op_has_a_rule(name):
    module, x = build(name)
    model = otoir.load(module, x)
    res = PassManager.from_text("classify-vertices").run(model)
    vc = res.analyses.get(VertexClasses)
    unknown = [(n.name, n.op_type) for n in vc.barriers()]
    assert unknown == [], f"{name}: ops without a rule: {unknown}"
    counts = vc.counts()
    assert counts[VertexKind.STEM] >= 1
    # every trainable torch parameter used by the graph is known as trainable
    used = {v.name for v in model.graph.initializers.values() if v.uses()}
    params = {k for k, _ in module.named_parameters()} & used
    assert params <= set(vc.trainable), sorted(params - set(vc.trainable))


def test_otoir_opt_on_resnet18_like_export(tmp_path):
    module, x = build("resnet_basic")
    path = tmp_path / "resnet.onnx"
    otoir.save(otoir.load(module, x), path)
    out, err = io.StringIO(), io.StringIO()
    code = main([str(path), "-p", "classify-vertices", "--annotate", "--print-ir-after-all", "--timing",
                 "--elide-initializers-if-larger", "64"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    text = out.getvalue()
    n_nodes = len(otoir.load(path).graph)
    assert text.count("# otoir.vertex=") == n_nodes
    assert "otoir.vertex=stem" in text and "otoir.vertex=joint" in text
    assert "otoir.vertex=unknown" not in text
    log = err.getvalue()
    assert "IR Dump After classify-vertices" in log and log.count("# otoir.vertex=") == n_nodes
    assert "Execution time report" in log
