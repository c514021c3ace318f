"""Training backends: ONNX Runtime training with a numpy optimizer (and torch, separately).

* :mod:`otoir.train.config`: :class:`TrainConfig`, the one source of training defaults (the
  ``train``, ``otoir-erase`` and ``otoir-prune`` passes and :func:`otoir.compress` use it), and
  :class:`TrainInputs` (a torch module, loss or dataset lent to the ``train`` pass).
* :mod:`otoir.train.ort_backend`: :class:`OrtTrainer`, :func:`train_ort`, :func:`evaluate`.
* :mod:`otoir.train.inference`: :func:`to_inference` (training-mode BN/Dropout -> inference).
* :mod:`otoir.train.optimizers`: the optimizer protocol and :func:`make_optimizer`.
* :mod:`otoir.train.sgd`: numpy SGD with momentum (torch semantics).

Importing this package does not import onnxruntime or torch.
"""

from __future__ import annotations

from otoir.train.config import TrainConfig, TrainInputs
from otoir.train.inference import InferenceFormError, is_inference_form, to_inference
from otoir.train.optimizers import Optimizer, OptimizerUnavailable, make_optimizer
from otoir.train.ort_backend import (
    BackendUnavailable,
    EvalResult,
    OrtTrainer,
    TrainHistory,
    TrainingError,
    evaluate,
    train_ort,
)
from otoir.train.sgd import SGD

__all__ = [
    "BackendUnavailable",
    "EvalResult",
    "InferenceFormError",
    "Optimizer",
    "OptimizerUnavailable",
    "OrtTrainer",
    "SGD",
    "TrainConfig",
    "TrainHistory",
    "TrainInputs",
    "TrainingError",
    "evaluate",
    "is_inference_form",
    "make_optimizer",
    "to_inference",
    "train_ort",
]
