"""compress() data: DataLoaders and iterables (streamed), numpy arrays, .npz, several integer inputs,
a fixed batch dimension, and one-line errors when the data do not fit the model."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import otoir  # noqa: E402
from otoir.data import DataFitError, StreamData, as_data, bind, load_npz  # noqa: E402
from otoir.errors import OtoirError  # noqa: E402
from otoir.tools.otoir_opt import main  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUIET = dict(progress=False, latency_runs=0)


def tiny_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))


def image_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def image_loader(batch: int = 16) -> torch.utils.data.DataLoader:
    x, y = image_data()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def check_compressed(res) -> None:
    assert res.report.verified is True
    assert res.report.max_rel_diff <= 1e-4
    assert res.removed_group_ids
    assert res.report.compressed.params < res.report.full.params


# ---------------------------------------------------------------------------------------------
# DataLoaders, iterables, arrays


def test_compress_accepts_a_dataloader_torch_backend():
    module = tiny_cnn()
    before = module[0].weight.detach().clone()
    res = otoir.compress(module, image_loader(), mode="prune", target_sparsity=0.5, epochs=2, **QUIET)
    check_compressed(res)
    assert res.report.details["backend"] == "torch"
    assert res.report.details["dataset"] == "<DataLoader>"
    assert not torch.equal(before, module[0].weight)  # the user's module was trained


def test_compress_accepts_a_dataloader_ort_backend():
    x, _ = image_data()
    model = otoir.load(tiny_cnn(), x[:2])
    res = otoir.compress(model, image_loader(batch=8), mode="prune", target_sparsity=0.5, epochs=2,
                         backend="ort", **QUIET)
    check_compressed(res)
    assert res.report.details["backend"] == "ort"
    assert res.report.details["steps"] == 2 * 64 // 8


def test_compress_accepts_numpy_arrays():
    x, y = image_data()
    res = otoir.compress(tiny_cnn(), (x.numpy(), y.numpy()), mode="prune", target_sparsity=0.5, epochs=2,
                         batch=16, **QUIET)
    check_compressed(res)


def test_iterable_of_batches_is_streamed():
    """A generator is read batch by batch: compress reads ahead only what its checks need."""
    x, y = image_data()
    produced = []

    def gen():
        for i in range(0, 64, 16):
            produced.append(i)
            yield x[i:i + 16], y[i:i + 16]

    class Sized:  # an iterable with len() that builds each batch only when asked
        def __len__(self):
            return 4

        def __iter__(self):
            return gen()

    src = StreamData(Sized())
    src.samples(2)
    assert produced == [0]  # the first batch only
    res = otoir.compress(tiny_cnn(), Sized(), mode="prune", target_sparsity=0.5, epochs=2, **QUIET)
    check_compressed(res)


def test_one_shot_generator_serves_one_epoch_only():
    x, y = image_data()
    batches = ((x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16))
    with pytest.raises(OtoirError) as err:
        otoir.compress(tiny_cnn(), batches, mode="prune", epochs=2, **QUIET)
    msg = str(err.value)
    assert "\n" not in msg and "one-shot" in msg and "epochs=2" in msg


def test_rebatch_keeps_order_and_drops_the_rest():
    from otoir.data import rebatch

    parts = [((np.arange(n0, n1)[:, None],), np.arange(n0, n1)) for n0, n1 in ((0, 5), (5, 8), (8, 15))]
    out = list(rebatch(parts, 4))
    assert [len(y) for _, y in out] == [4, 4, 4]
    assert np.array_equal(np.concatenate([y for _, y in out]), np.arange(12))


# ---------------------------------------------------------------------------------------------
# Several integer inputs: a tiny BERT (transformers config, random init)


@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=3, return_dict=False,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    module = transformers.BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (64, 8), generator=g)
    mask = torch.ones(64, 8, dtype=torch.long)
    mask[:, 6:] = 0
    labels = ids[:, 0] % 3
    return module, ids, mask, labels


class TokenData(torch.utils.data.Dataset):
    """Hugging Face style samples: dicts with input_ids, attention_mask and labels."""

    def __init__(self, ids, mask, labels):
        self.ids, self.mask, self.labels = ids, mask, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def token_loader(bert, batch: int = 8):
    _, ids, mask, labels = bert
    return torch.utils.data.DataLoader(TokenData(ids, mask, labels), batch_size=batch, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def test_two_input_token_model_torch_backend(bert):
    import copy

    module = copy.deepcopy(bert[0])
    res = otoir.compress(module, token_loader(bert), mode="prune", target_sparsity=0.3, epochs=2, lr=0.01, **QUIET)
    check_compressed(res)
    inputs = {v.name: v.dtype for v in res.model.graph.inputs}
    assert inputs == {"input_ids": otoir_dtype("INT64"), "attention_mask": otoir_dtype("INT64")}


def test_two_input_token_model_ort_backend(bert):
    module, ids, mask, _ = bert
    model = otoir.load(module, {"input_ids": ids[:2], "attention_mask": mask[:2]})
    res = otoir.compress(model, token_loader(bert), mode="prune", target_sparsity=0.3, epochs=2, lr=0.01,
                         backend="ort", **QUIET)
    check_compressed(res)


def test_npz_token_ids_stay_integer(bert, tmp_path):
    module, ids, mask, labels = bert
    path = tmp_path / "tokens.npz"
    np.savez(path, **{"inputs.input_ids": ids.numpy().astype(np.int32), "inputs.attention_mask": mask.numpy(),
                      "labels": labels.numpy()})
    ds = load_npz(str(path))
    assert ds.train_x["input_ids"].dtype == np.int32 and ds.train_x["attention_mask"].dtype == np.int64
    model = otoir.load(module, {"input_ids": ids[:2], "attention_mask": mask[:2]})
    feeds = bind(ds, model).feeds(ds.samples(3)[0])
    assert [f.dtype for f in feeds] == [np.int64, np.int64]  # cast to the model's integer type, never float
    assert np.array_equal(feeds[0], ids[:3].numpy())
    res = otoir.compress(model, str(path), mode="prune", target_sparsity=0.3, epochs=2, batch=8, lr=0.01,
                         backend="ort", **QUIET)
    check_compressed(res)


def otoir_dtype(name: str):
    import onnx_ir as ir

    return getattr(ir.DataType, name)


# ---------------------------------------------------------------------------------------------
# A fixed batch dimension


@pytest.fixture(scope="module")
def fixed_batch_model(tmp_path_factory):
    """The tiny CNN exported the ordinary way with a fixed batch of 2 (no dynamic axes)."""
    import warnings

    d = tmp_path_factory.mktemp("fixed")
    x, y = image_data()
    module = tiny_cnn().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, x[:2], d / "m.onnx", dynamo=False, input_names=["x"])
    np.savez(d / "d.npz", inputs=x.numpy()[:40], labels=y.numpy()[:40], val_inputs=x.numpy()[40:49],
             val_labels=y.numpy()[40:49])
    return d / "m.onnx", d / "d.npz"


def test_fixed_batch_model_trains_at_its_batch_cli(fixed_batch_model, tmp_path):
    """Was: 'Got 8 Expected 2' inside train. The data are batched at the model's fixed batch."""
    src, data = fixed_batch_model
    out, err = io.StringIO(), io.StringIO()
    code = main([str(src), "-p", f"otoir-prune{{data={data} epochs=2 batch=8 target-sparsity=0.5 quiet=true}}",
                 "--verify", "-o", str(tmp_path / "o.onnx")], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert "fixed batch of 2: training uses batches of 2, not batch=8" in err.getvalue()
    dims = otoir.load(tmp_path / "o.onnx").graph.inputs[0].shape.dims
    assert dims[0] == 2  # the model keeps the interface it was exported with


def test_fixed_batch_model_with_a_dataloader(fixed_batch_model):
    src, _ = fixed_batch_model
    res = otoir.compress(otoir.load(src), image_loader(batch=16), mode="prune", target_sparsity=0.5, epochs=2,
                         backend="ort", **QUIET)
    check_compressed(res)
    assert res.report.details["steps"] == 2 * 64 // 2  # 16-row batches re-cut into batches of 2


# ---------------------------------------------------------------------------------------------
# One-line errors naming the data and the model


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def test_mnist_on_a_three_channel_module():
    with pytest.raises(OtoirError) as err:
        otoir.compress(tiny_cnn(), "mnist", **QUIET)
    msg = one_line(err.value)
    assert "data 'mnist'" in msg and "Sequential" in msg and "channels" in msg


def test_mnist_on_a_three_channel_onnx_model():
    x, _ = image_data()
    with pytest.raises(OtoirError) as err:
        otoir.compress(otoir.load(tiny_cnn(), x[:2]), "mnist", backend="ort", **QUIET)
    msg = one_line(err.value)
    assert "data 'mnist'" in msg and "model input 'input'" in msg and "1 channel(s) vs 3" in msg


def test_wrong_sample_shape():
    x, y = image_data()
    model = otoir.load(tiny_cnn(), x[:2])
    small = np.zeros((8, 3, 6, 6), np.float32)
    with pytest.raises(OtoirError) as err:
        otoir.compress(model, (small, y.numpy()[:8]), backend="ort", **QUIET)
    msg = one_line(err.value)
    assert "(3, 6, 6)" in msg and "(3, 8, 8)" in msg and "model input 'input'" in msg


def test_float_data_for_token_ids(bert):
    module, ids, mask, labels = bert
    model = otoir.load(module, {"input_ids": ids[:2], "attention_mask": mask[:2]})
    data = ({"input_ids": ids.numpy().astype(np.float32), "attention_mask": mask.numpy()}, labels.numpy())
    with pytest.raises(OtoirError) as err:
        otoir.compress(model, data, backend="ort", **QUIET)
    msg = one_line(err.value)
    assert "'input_ids' is float32" in msg and "model input 'input_ids' takes int64" in msg


def test_wrong_number_and_names_of_inputs(bert):
    module, ids, mask, labels = bert
    model = otoir.load(module, {"input_ids": ids[:2], "attention_mask": mask[:2]})
    with pytest.raises(DataFitError) as err:
        bind(as_data((ids.numpy(), labels.numpy())), model)
    assert "gives 1 input(s) per batch, the model takes 2 (input_ids, attention_mask)" in one_line(err.value)
    with pytest.raises(DataFitError) as err:
        bind(as_data(({"input_ids": ids.numpy(), "mask": mask.numpy()}, labels.numpy())), model)
    assert "no input 'attention_mask'" in one_line(err.value)


def test_cli_error_is_one_line(fixed_batch_model, tmp_path):
    src, _ = fixed_batch_model
    out, err = io.StringIO(), io.StringIO()
    code = main([str(src), "-p", "otoir-prune{data=mnist quiet=true}", "-o", str(tmp_path / "o.onnx")],
                stdout=out, stderr=err)
    assert code != 0
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert len(lines) == 1 and "data 'mnist'" in lines[0] and "model input 'x'" in lines[0]


def test_static_batch_two_input_token_model_cli_report(bert, tmp_path):
    """A static-batch-4 two-input integer model, named-input .npz: train, prune, --report and --verify."""
    from otoir.frontends.torch_export import export_torch

    module, ids, mask, labels = bert
    otoir.save(export_torch(module, {"input_ids": ids[:4], "attention_mask": mask[:4]}, dynamic_batch=False),
               tmp_path / "b4.onnx")
    arrays = {"inputs.input_ids": ids[:48].numpy(), "inputs.attention_mask": mask[:48].numpy(),
              "labels": labels[:48].numpy(), "val_inputs.input_ids": ids[48:].numpy(),
              "val_inputs.attention_mask": mask[48:].numpy(), "val_labels": labels[48:].numpy()}
    np.savez(tmp_path / "tok.npz", **arrays)
    out, err = io.StringIO(), io.StringIO()
    code = main([str(tmp_path / "b4.onnx"), "-p",
                 f"otoir-prune{{data={tmp_path / 'tok.npz'} epochs=2 batch=8 target-sparsity=0.3 lr=0.01 quiet=true}}",
                 "--report", "--verify", "-o", str(tmp_path / "o.onnx")], stdout=out, stderr=err)
    text = err.getvalue()
    assert code == 0, text
    assert "ORT CPU latency, batch 4" in text and "(tolerance 0.0001): OK" in text and "accuracy (held-out)" in text
    assert otoir.load(tmp_path / "o.onnx").graph.inputs[0].shape.dims[0] == 4


def test_as_data_forms():
    x, y = image_data(n=10)
    ds = as_data((x, y))  # torch tensors are arrays too
    assert type(ds).__name__ == "Dataset" and ds.num_classes == int(y.max()) + 1 and len(ds) == 10
    ds = as_data({"input": x.numpy(), "labels": y.numpy()})
    assert set(ds.train_x) == {"input"} and np.array_equal(ds.train_y, y.numpy())
    listed = as_data([(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])])
    assert isinstance(listed, StreamData) and listed.reiterable
    assert listed.steps_per_epoch(None) == 3 and listed.steps_per_epoch(4) == 2  # 10 rows in batches of 4
    loader = image_loader(batch=16)
    assert as_data(loader).steps_per_epoch(None) == 4 and as_data(loader).steps_per_epoch(5) == 64 // 5
    with pytest.raises(Exception, match="not supported"):
        as_data(3.5)


def test_token_model_with_dropout_ort_backend(bert):
    """Hugging Face's default dropout exports attention Dropout without its mask output; ORT training needs it."""
    transformers = pytest.importorskip("transformers")
    _, ids, mask, _ = bert
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=3)  # dropout 0.1
    module = transformers.BertForSequenceClassification(cfg)
    model = otoir.load(module, {"input_ids": ids[:2], "attention_mask": mask[:2]})
    assert any(n.op_type == "Dropout" and len(n.outputs) == 1 for n in model.graph)
    res = otoir.compress(model, token_loader(bert), mode="prune", target_sparsity=0.3, epochs=2, lr=0.01,
                         backend="ort", **QUIET)
    check_compressed(res)


def test_example_inputs_that_do_not_fit_the_module_are_one_line():
    torch = pytest.importorskip("torch")
    import otoir
    from otoir.errors import OtoirError

    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    module(torch.randn(1, 1, 28, 28))
    with pytest.raises(OtoirError) as info:
        otoir.compress(module, "mnist", mode="prune", epochs=1, progress=False, example_inputs=torch.randn(2, 3, 28, 28))
    msg = str(info.value)
    assert "\n" not in msg and "example inputs" in msg and "Sequential" in msg
