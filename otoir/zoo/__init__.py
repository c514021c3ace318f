"""Model zoo: small torch networks (erasing super-networks, pruning networks) and random ONNX DAGs.

Importing this package does not import torch; :func:`build` and the factories do. The
ONNX-level random networks (:mod:`otoir.zoo.random_dag`) need no torch at all.

Example:
    >>> from otoir.zoo import MODELS, build
    >>> module, x = build("demosupnet", width=0.125)   # doctest: +SKIP
    >>> from otoir.frontends import export_torch
    >>> model = export_torch(module, x)                  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["MODELS", "PRUNING_NETWORKS", "SUPERNETS", "ZooEntry", "build", "names", "parse_spec"]


class ZooEntry(NamedTuple):
    """One zoo model.

    Attributes:
        factory: ``factory(**kwargs) -> torch.nn.Module`` (imports torch when called).
        example_input_shape: Shape of the example input, batch first (batch 2: enough for
            train-mode BatchNorm statistics).
        description: One line: what the network exercises.
    """

    factory: Callable[..., Any]
    example_input_shape: tuple[int, ...]
    description: str


def _lazy(module: str, attr: str, **defaults: Any) -> Callable[..., Any]:
    def factory(**kwargs: Any) -> Any:
        cls = getattr(importlib.import_module(f"otoir.zoo.{module}"), attr)
        return cls(**{**defaults, **kwargs})

    def parameters() -> list[str]:
        """The keyword arguments the network's constructor takes (imports its module, not torch's models)."""
        import inspect

        cls = getattr(importlib.import_module(f"otoir.zoo.{module}"), attr)
        params = inspect.signature(cls).parameters.values()
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    factory.parameters = parameters  # type: ignore[attr-defined]
    factory.__name__ = attr
    factory.__qualname__ = attr
    factory.__doc__ = f"Builds ``otoir.zoo.{module}.{attr}`` (defaults {defaults or '{}'}; keywords override)."
    return factory


MODELS: dict[str, ZooEntry] = {
    # Erasing super-networks (OTOv3).
    "demosupnet": ZooEntry(
        _lazy("supernets", "DemoSupNet"),
        (2, 1, 28, 28),
        "OTOv3 Figure 1 DemoSupNet: Concat of 3 branches into Conv6, Adds; 0.83M params (width kwarg)",
    ),
    "stackedunets": ZooEntry(
        _lazy("supernets", "StackedUnets"),
        (2, 3, 32, 32),
        "two U-Nets (max-pool / strided-conv downsamplers, Resize up, Add skips) merged by Add",
    ),
    "darts_supernet": ZooEntry(
        _lazy("supernets", "DARTSSupernet"),
        (2, 3, 32, 32),
        "DARTS cells; every edge sums sep3/sep5/dil3/maxpool+1x1/avgpool+1x1 candidates",
    ),
    "superresnet": ZooEntry(
        _lazy("supernets", "SuperResNet"),
        (2, 3, 32, 32),
        "super-residual blocks: identity + parallel 3x3/5x5/7x7 conv-BN candidates",
    ),
    "regnet_style": ZooEntry(
        _lazy("supernets", "RegNetStyle"),
        (2, 3, 32, 32),
        "RegNet stages; blocks sum parallel group-conv bottleneck candidates + shortcut",
    ),
    # Pruning networks (OTOv2).
    "resnet_basic": ZooEntry(
        _lazy("cnns", "ResNet", width=8, block="basic", layers=(2, 2, 2, 2)),
        (2, 3, 32, 32),
        "ResNet-18 layout for CIFAR at width 8 (residual Adds, downsample projections)",
    ),
    "resnet18_cifar": ZooEntry(
        _lazy("cnns", "ResNet", width=64, block="basic", layers=(2, 2, 2, 2)),
        (2, 3, 32, 32),
        "full-width ResNet-18 for CIFAR, 11.2M params (benchmarks only)",
    ),
    "resnet_bottleneck": ZooEntry(
        _lazy("cnns", "ResNet", width=8, block="bottleneck", layers=(1, 1, 1)),
        (2, 3, 32, 32),
        "ResNet with bottleneck blocks (expansion 4)",
    ),
    "vgg_bn": ZooEntry(
        _lazy("cnns", "VGG"),
        (2, 3, 32, 32),
        "VGG with BN; 2x2 map flattened into Linear-ReLU-Dropout-Linear",
    ),
    "densenet": ZooEntry(
        _lazy("cnns", "DenseNet"),
        (2, 3, 32, 32),
        "DenseNet-BC: nested Concats, transitions",
    ),
    "mobilenetv2": ZooEntry(
        _lazy("cnns", "MobileNetV2"),
        (2, 3, 32, 32),
        "MobileNetV2: depthwise convs, inverted residuals, ReLU6",
    ),
    "resnext_block": ZooEntry(
        _lazy("cnns", "ResNeXt"),
        (2, 3, 32, 32),
        "ResNeXt bottlenecks with groups=4 3x3 convs",
    ),
    "se_block": ZooEntry(
        _lazy("cnns", "SENet"),
        (2, 3, 32, 32),
        "squeeze-and-excitation blocks: GAP-conv-relu-conv-sigmoid gating by Mul",
    ),
    "shufflenet": ZooEntry(
        _lazy("cnns", "ShuffleNetV2"),
        (2, 3, 32, 32),
        "ShuffleNetV2: channel split, Concat, channel shuffle via view/transpose/view",
    ),
    "conv_view_linear": ZooEntry(
        _lazy("cnns", "ConvViewLinear"),
        (2, 3, 8, 8),
        "conv-BN-ReLU, x.view(B,-1) of a 4x4 map, Linear",
    ),
    "unet": ZooEntry(
        _lazy("cnns", "UNet"),
        (2, 3, 32, 32),
        "U-Net: ConvTranspose upsampling, torch.cat skips, per-pixel logits",
    ),
    "bert_like": ZooEntry(
        _lazy("transformers", "BertLike"),
        (2, 16),
        "2-layer post-LN BERT, hand-written MHA (q/k/v Linears, heads reshape); int64 token ids",
    ),
    "vit_like": ZooEntry(
        _lazy("transformers", "ViTLike"),
        (2, 3, 32, 32),
        "ViT: patch-embed conv, class token, 2 post-LN encoder layers, head",
    ),
}

#: Names of the erasing super-networks.
SUPERNETS: tuple[str, ...] = (
    "demosupnet",
    "stackedunets",
    "darts_supernet",
    "superresnet",
    "regnet_style",
)
#: Names of the pruning networks.
PRUNING_NETWORKS: tuple[str, ...] = tuple(n for n in MODELS if n not in SUPERNETS)

# Models whose input is int64 token ids: name -> keyword holding the vocabulary size, default.
_TOKEN_INPUTS: dict[str, tuple[str, int]] = {"bert_like": ("vocab", 100)}


def names() -> list[str]:
    """Returns the zoo model names in registry order."""
    return list(MODELS)


def build(name: str, *, seed: int = 0, batch: int | None = None, **kwargs: Any) -> tuple[torch.nn.Module, torch.Tensor]:
    """Builds a zoo model and an example input, deterministically.

    The parameters are initialised after ``torch.manual_seed(seed)``; the example input comes
    from a separate generator seeded with ``seed`` (float inputs are standard normal, token ids
    uniform over the vocabulary). The module is returned in train mode.

    Args:
        name: A key of :data:`MODELS`.
        seed: Seed for parameters and input.
        batch: Batch size of the example input (default: the registry's, 2).
        **kwargs: Passed to the factory (e.g. ``width=0.25``); ``in_channels`` also sets the
            example input's channel count.

    Returns:
        ``(module, example_input)``.

    Raises:
        KeyError: Unknown name (the message lists the known ones).
    """
    import torch

    try:
        entry = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)}") from None
    torch.manual_seed(seed)
    module = entry.factory(**kwargs)
    module.train()
    shape = tuple(entry.example_input_shape)
    if batch is not None:
        shape = (batch, *shape[1:])
    if "in_channels" in kwargs and name not in _TOKEN_INPUTS and len(shape) >= 3:
        shape = (shape[0], int(kwargs["in_channels"]), *shape[2:])  # the example fits the network built
    gen = torch.Generator().manual_seed(seed)
    if name in _TOKEN_INPUTS:
        key, default = _TOKEN_INPUTS[name]
        x = torch.randint(0, int(kwargs.get(key, default)), shape, generator=gen, dtype=torch.int64)
    else:
        x = torch.randn(shape, generator=gen)
    return module, x


def _parse_value(text: str) -> Any:
    """``3`` -> 3, ``0.5`` -> 0.5, ``2,2,2`` -> (2, 2, 2), ``true``/``false`` -> bool, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if "," in text:
        return tuple(_parse_value(t) for t in text.split(","))
    for convert in (int, float):
        try:
            value = convert(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"'{text}' is not a finite number")
        return value
    return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any], list[int] | None]:
    """Parses a ``zoo:`` argument without the prefix: ``NAME`` or ``NAME?key=value&...``.

    Keys are the network's constructor arguments, plus ``input=CxHxW`` for the example input's
    shape without the batch.

    Returns:
        ``(name, constructor kwargs, input dims or None)``.

    Raises:
        ValueError: Unknown model, malformed or unknown key, or bad value (one line, naming it).
    """
    name, _, query = spec.partition("?")
    if name not in MODELS:
        raise ValueError(f"unknown built-in model 'zoo:{name}' (known: {', '.join(sorted(MODELS))})")
    kwargs: dict[str, Any] = {}
    dims = None
    try:  # the constructor's keywords, and build()'s own seed= and batch=
        known = [*MODELS[name].factory.parameters(), "seed", "batch"]
    except (AttributeError, ImportError):  # no torch: the build will say so
        known = None
    for item in filter(None, query.split("&")):
        key, eq, text = item.partition("=")
        if not eq or not key or not text:
            raise ValueError(f"zoo:{name}: expected key=value, got '{item}'")
        if key in kwargs or (key == "input" and dims is not None):
            raise ValueError(f"zoo:{name}: '{key}' given twice")
        if key == "input":
            try:
                dims = [int(d) for d in text.split("x")]
            except ValueError:
                dims = None
            if not dims or any(d <= 0 or d > 4096 for d in dims):
                raise ValueError(f"zoo:{name}: input= wants positive dimensions like 1x28x28, got '{text}'")
            continue
        if known is not None and key not in known:
            raise ValueError(f"zoo:{name}: unknown argument '{key}' (arguments: {', '.join([*known, 'input'])})")
        try:
            kwargs[key] = _parse_value(text)
        except ValueError as exc:
            raise ValueError(f"zoo:{name}: bad value for '{key}': {exc}") from None
    return name, kwargs, dims
