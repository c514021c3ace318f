"""ONNX Runtime training backend against a torch reference (SGD steps, grads, BN statistics)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.training")

from otoir.frontends.torch_export import export_torch  # noqa: E402
from otoir.testing import run_ort  # noqa: E402
from otoir.train import SGD, OrtTrainer, evaluate, make_optimizer, to_inference  # noqa: E402
from otoir.train.ort_backend import BackendUnavailable, TrainingError, require_ort_training  # noqa: E402


class SmallCNN(torch.nn.Module):
    """Conv-BN2d-ReLU, a residual conv, GAP, Linear and a BatchNorm1d on the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(6)
        self.c2 = torch.nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(6)
        self.fc = torch.nn.Linear(6, 4)
        self.bn3 = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        h = torch.relu(self.bn1(self.c1(x)))
        h = torch.relu(h + self.bn2(self.c2(h)))
        return self.bn3(self.fc(h.mean((2, 3))))


def _pair(seed: int = 0):
    """A torch module and its export, with the torch module holding the export's values."""
    torch.manual_seed(seed)
    m = SmallCNN()
    model = export_torch(m, torch.randn(2, 1, 8, 8))
    inits = model.graph.initializers
    sd = {k: torch.from_numpy(inits[k].const_value.numpy().copy()) for k in m.state_dict() if k in inits}
    m.load_state_dict(sd, strict=False)
    return m, model


def _batches(n: int, seed: int = 1, b: int = 8):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((b, 1, 8, 8)).astype(np.float32), rng.integers(0, 4, b)) for _ in range(n)]


def _train_both(steps: int = 4, **trainer_kw):
    m, model = _pair()
    opt = SGD(0.1, momentum=0.9, weight_decay=1e-3)
    topt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    losses, tlosses = [], []
    with OrtTrainer(model, threads=1, **trainer_kw) as tr:
        for xb, yb in _batches(steps):
            losses.append(tr.step(xb, yb, opt))
            topt.zero_grad()
            lt = torch.nn.functional.cross_entropy(m(torch.from_numpy(xb)), torch.from_numpy(yb))
            lt.backward()
            topt.step()
            tlosses.append(lt.item())
        state = tr.state_dict()
        tr.write_back()
    return m, model, np.array(losses), np.array(tlosses), state


def test_losses_and_parameters_match_torch_sgd():
    m, model, losses, tlosses, state = _train_both()
    np.testing.assert_allclose(losses, tlosses, rtol=1e-4, atol=1e-6)
    assert losses[0] != losses[-1]
    for name, t in m.state_dict().items():
        if name in state:
            np.testing.assert_allclose(state[name], t.detach().numpy(), rtol=1e-4, atol=2e-5, err_msg=name)


def test_running_stats_match_torch_and_inference_outputs_equal_torch_eval():
    m, model, _, _, state = _train_both()
    inits = model.graph.initializers
    for name in ("bn1.running_mean", "bn1.running_var", "bn3.running_var"):
        np.testing.assert_allclose(inits[name].const_value.numpy(), m.state_dict()[name].numpy(), rtol=1e-4, atol=1e-6)
    m.eval()
    x = np.random.default_rng(7).standard_normal((5, 1, 8, 8)).astype(np.float32)
    got = run_ort(to_inference(model), {"input": x})[0]
    want = m(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    y = np.array([0, 1, 2, 3, 0])
    res = evaluate(model, x, y, batch=2)
    assert res.samples == 5
    assert res.accuracy == pytest.approx(float((want.argmax(1) == y).mean()))
    tl = torch.nn.functional.cross_entropy(torch.from_numpy(want), torch.from_numpy(y)).item()
    assert res.loss == pytest.approx(tl, rel=1e-4)


def test_onnx_biased_variance_differs_without_correction():
    """ORT's own update uses the biased batch variance; the trainer's correction is what makes BN right."""
    m, model, _, _, state = _train_both(bn_unbiased_var=False)
    torch_var = m.state_dict()["bn3.running_var"].numpy()  # BatchNorm1d, n = 8 per channel: 8/7 matters
    assert np.abs(state["bn3.running_var"] - torch_var).max() > 1e-3
    np.testing.assert_allclose(state["bn3.running_mean"], m.state_dict()["bn3.running_mean"].numpy(), rtol=1e-4, atol=1e-6)


def test_gradients_match_torch_and_are_reset_every_step():
    m, model = _pair()
    (xb, yb), = _batches(1)
    with OrtTrainer(model, threads=1, bn_unbiased_var=False) as tr:
        tr.forward_backward(xb, yb)
        g1 = {k: v.copy() for k, v in tr.grads().items()}
        tr.forward_backward(xb, yb)  # would be 2x without lazy_reset_grad (BN stats differ, batch stats don't)
        g2 = tr.grads()
        for k in g1:
            np.testing.assert_allclose(g2[k], g1[k], rtol=1e-4, atol=1e-6, err_msg=k)
    torch.nn.functional.cross_entropy(m(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
    for name, p in m.named_parameters():
        # bias before BN: true gradient 0, both sides are float noise -> absolute floor
        scale = float(p.grad.abs().max())
        assert np.abs(g1[name] - p.grad.numpy()).max() <= 5e-3 * scale + 1e-5, name


def test_write_back_keeps_names_shapes_dtypes_and_changes_values():
    _, model = _pair()
    before = {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items()}
    with OrtTrainer(model, threads=1) as tr:
        for xb, yb in _batches(2):
            tr.step(xb, yb, SGD(0.1))
        tr.write_back()
    after = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}
    assert list(after) == list(before)
    for k in before:
        assert after[k].shape == before[k].shape and after[k].dtype == before[k].dtype
    assert not np.array_equal(after["c1.weight"], before["c1.weight"])
    assert not np.array_equal(after["bn1.running_mean"], before["bn1.running_mean"])


def test_layernorm_and_mse_loss_train_like_torch():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    model = export_torch(m, torch.randn(2, 6))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    y = rng.standard_normal((5, 3)).astype(np.float32)
    with OrtTrainer(model, loss="mse", threads=1) as tr:
        loss = tr.forward_backward(x, y)
        grads = tr.grads()
    lt = torch.nn.functional.mse_loss(m(torch.from_numpy(x)), torch.from_numpy(y))
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-5)
    for name, p in m.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-3, atol=1e-6, err_msg=name)


def test_bad_loss_and_output_names_raise():
    _, model = _pair()
    with pytest.raises(TrainingError, match="unknown loss"):
        OrtTrainer(model, loss="hinge")
    with pytest.raises(TrainingError, match="no output 'nope'"):
        OrtTrainer(model, output="nope")


def test_missing_training_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime.training", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'otoir\[train\]'.*uninstall plain onnxruntime"):
        require_ort_training()


def test_numpy_sgd_matches_torch_sgd():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    for kw in ({"momentum": 0.9, "weight_decay": 0.01}, {"momentum": 0.9, "nesterov": True}, {}):
        p = {"w": w0.copy()}
        opt = SGD(0.05, **kw)
        tw = torch.nn.Parameter(torch.from_numpy(w0.copy()))
        topt = torch.optim.SGD([tw], lr=0.05, **kw)
        for _ in range(3):
            g = rng.standard_normal((3, 4)).astype(np.float32)
            opt.step(p, {"w": g})
            tw.grad = torch.from_numpy(g.copy())
            topt.step()
        np.testing.assert_allclose(p["w"], tw.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=str(kw))


def test_make_optimizer():
    assert isinstance(make_optimizer("sgd", lr=0.1, momentum=0.5), SGD)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adam")
    with pytest.raises(ValueError, match="needs the group analysis"):
        make_optimizer("dhspg", None, None, lr=0.1)


def test_recalibrate_bn_matches_torch_cumulative_recalibration():
    from otoir.train.ort_backend import recalibrate_bn

    m, model = _pair()
    x = np.random.default_rng(3).standard_normal((20, 1, 8, 8)).astype(np.float32)
    assert recalibrate_bn(model, x, batch=8) == 3  # batches of 8, 8, 4
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        for s in range(0, 20, 8):
            m(torch.from_numpy(x[s : s + 8]))
    inits = model.graph.initializers
    for name in ("bn1.running_mean", "bn1.running_var", "bn2.running_var", "bn3.running_mean", "bn3.running_var"):
        np.testing.assert_allclose(inits[name].const_value.numpy(), m.state_dict()[name].numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=name)


def test_average_pool_needs_and_works_with_a_static_batch():
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.AvgPool2d(3, 1, 1),
        torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3),
    )
    model = export_torch(m, torch.randn(2, 1, 6, 6))
    with pytest.raises(TrainingError, match="AveragePool"):
        OrtTrainer(model)  # a symbolic batch would crash ORT's AveragePoolGrad with SIGFPE
    inits = model.graph.initializers
    m.load_state_dict({k: torch.from_numpy(inits[k].const_value.numpy().copy()) for k in m.state_dict() if k in inits},
                      strict=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 4)
    with OrtTrainer(model, batch_size=4, threads=1) as tr:
        loss = tr.forward_backward(x, y)
        grads = tr.grads()
        with pytest.raises(TrainingError, match="batches of 4"):
            tr.forward_backward(x[:3], y[:3])
    lt = torch.nn.functional.cross_entropy(m(torch.from_numpy(x)), torch.from_numpy(y))
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-5)
    np.testing.assert_allclose(grads["0.weight"], m[0].weight.grad.numpy(), rtol=1e-3, atol=1e-5)


def test_op_without_cpu_gradient_kernel_gives_a_training_error():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ConvTranspose2d(2, 3, 2, stride=2),
                            torch.nn.Flatten(), torch.nn.Linear(3 * 64, 2))
    model = export_torch(m, torch.randn(2, 1, 4, 4))
    with pytest.raises(TrainingError, match="ConvTransposeGrad.*torch backend"):
        OrtTrainer(model)
