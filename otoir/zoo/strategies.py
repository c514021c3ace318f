"""Hypothesis strategies over the zoo's random ONNX networks.

hypothesis is a test dependency: it is imported when :func:`conv_dags` is called, not when this
module is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir
    from hypothesis.strategies import SearchStrategy

__all__ = ["conv_dag_params", "conv_dags"]


def conv_dag_params(
    max_blocks: int = 6, max_channels: int = 8, sizes: tuple[int, ...] = (4, 8)
) -> SearchStrategy[dict[str, Any]]:
    """Draws keyword arguments for :func:`otoir.zoo.random_dag.random_conv_dag`.

    Args:
        max_blocks: Largest ``n_blocks``.
        max_channels: Largest channel count (channel counts are drawn from 2 upwards).
        sizes: Candidate input sizes.

    Returns:
        A strategy of dicts (``seed``, ``n_blocks``, ``channels``, ``image_size``, …); shrinking
        goes towards fewer blocks, fewer channels and seed 0.
    """
    from hypothesis import strategies as st

    return st.fixed_dictionaries(
        {
            "seed": st.integers(0, 2**31 - 1),
            "n_blocks": st.integers(1, max_blocks),
            # At least 2 channels: a 1-channel conv has no channel that pruning may remove.
            "channels": st.integers(2, max(2, max_channels)).flatmap(
                lambda lo: st.tuples(st.just(lo), st.integers(lo, max(lo, max_channels)))
            ),
            "in_channels": st.integers(1, 3),
            "image_size": st.sampled_from(sizes),
            "max_branches": st.integers(1, 3),
        }
    )


def conv_dags(max_blocks: int = 6, max_channels: int = 8, sizes: tuple[int, ...] = (4, 8)) -> SearchStrategy[ir.Model]:
    """Draws random convolutional DAGs (see :func:`otoir.zoo.random_dag.random_conv_dag`).

    The drawn keyword arguments are stored in ``model.meta["otoir.random_dag_params"]`` so a
    failing example can be rebuilt.

    Args:
        max_blocks: Largest ``n_blocks``.
        max_channels: Largest channel count.
        sizes: Candidate input sizes.

    Returns:
        A strategy of onnx-ir models.
    """
    from otoir.zoo.random_dag import random_conv_dag

    def make(params: dict[str, Any]) -> ir.Model:
        model = random_conv_dag(**params)
        model.meta["otoir.random_dag_params"] = dict(params)
        return model

    return conv_dag_params(max_blocks, max_channels, sizes).map(make)
