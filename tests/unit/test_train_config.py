"""TrainConfig: the one source of training defaults, validation and derived step/group counts."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from otoir.errors import OtoirError, PipelineError
from otoir.infra import PassManager, get_pass
from otoir.train.config import TrainConfig


def _defaults(cls) -> dict:
    return {o.name: o.default for o in cls.options()}


def test_pass_options_are_the_config_fields_with_its_defaults():
    cfg = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(TrainConfig)}
    for name in ("train", "otoir-erase", "otoir-prune"):
        opts = _defaults(get_pass(name))
        assert {k: opts[k] for k in cfg} == cfg, name


def test_compress_keyword_defaults_match_the_config():
    from otoir.api import compress

    sig = inspect.signature(compress).parameters
    for f in dataclasses.fields(TrainConfig):
        if f.name == "data":
            assert sig["data"].default == f.default
        elif f.name == "optimizer":
            assert sig["optimizer"].default is None and f.default == "auto"  # None: by mode
        elif f.name == "latency_threads":  # None: the report times on the CPUs, target-latency on 1
            assert sig[f.name].default is None and f.default == 1
        else:
            assert sig[f.name].default == f.default, f.name


@pytest.mark.parametrize("text", ["train{target-sparsity=1.0}", "otoir-erase{target-sparsity=-0.1}",
                                  "otoir-prune{target-sparsity=1.5}"])
def test_target_is_validated_once_with_one_message(text):
    with pytest.raises(PipelineError, match=r"target-sparsity must be in \[0, 1\)"):
        PassManager.from_text(text)


def test_compress_reports_bad_options_before_training():
    from otoir.api import compress

    with pytest.raises(OtoirError, match=r"target-sparsity must be in \[0, 1\)"):
        compress("unused.onnx", "mnist", target_sparsity=1.0)
    with pytest.raises(OtoirError, match="backend must be one of"):
        compress("unused.onnx", "mnist", backend="gpu")


def test_schedule_is_fractions_or_steps():
    assert TrainConfig(warmup=0.25, projection=0.35).schedule_steps(100) == (25, 35)
    assert TrainConfig(warmup=10, projection=20).schedule_steps(100) == (10, 20)
    with pytest.raises(ValueError, match="exceed the 30 training steps"):
        TrainConfig(warmup=20, projection=20).schedule_steps(30)


@pytest.mark.parametrize(("target", "groups"), [(0.5, 7), (0.3, 10), (0.0, 5), (0.999, 3)])
def test_target_count_is_the_optimizers_count(target, groups):
    import math

    from otoir.optim.core import SparsitySchedule

    k = TrainConfig(target_sparsity=target).target_count(groups)
    assert k == SparsitySchedule(target=target).target_count(groups) == math.floor(target * groups + 1e-9)


def test_auto_optimizer_follows_the_groups():
    assert TrainConfig().structured_optimizer("gezig") == "h2spg"
    assert TrainConfig().structured_optimizer("zig") == "dhspg"
    assert TrainConfig().structured_optimizer(None) == "sgd"
    assert TrainConfig(optimizer="dhspg").structured_optimizer("gezig") == "dhspg"
    train = get_pass("train")
    assert train().resolved() == ("sgd", None)
    assert train(optimizer="h2spg").resolved() == ("h2spg", "gezig")
    assert train(groups="zig").resolved() == ("dhspg", "zig")
    erase = PassManager.from_text("otoir-erase{variant=adam lr=0.001 epochs=5}").passes[0]
    child = erase.train_pass()
    assert child.resolved() == ("h2spg", "gezig")
    assert (child.variant, child.lr, child.epochs, child.lam) == ("adam", 0.001, 5, 1e-3)


def test_round_to_default_is_one_everywhere_the_selection_takes_it():
    """train/otoir-prune (TrainConfig), zero-groups, compress and the own-loop analyze share one default."""
    from otoir.analyses.validity import ROUND_TO_DEFAULT
    from otoir.api import compress
    from otoir.workflow import analyze

    assert TrainConfig().round_to == ROUND_TO_DEFAULT == "auto"
    assert get_pass("zero-groups")().round_to == ROUND_TO_DEFAULT
    for fn in (compress, analyze):
        assert inspect.signature(fn).parameters["round_to"].default == ROUND_TO_DEFAULT, fn.__name__
