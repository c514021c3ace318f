"""Unit tests of the channel-propagation primitives."""

from __future__ import annotations

import numpy as np

from otoir.analyses.zig import components, reshape_blocks


def test_reshape_blocks_factorise_shuffle_and_flatten():
    assert reshape_blocks((2, 8, 4, 4), (2, 2, 4, 4, 4)) == [([0], [0]), ([1], [1, 2]), ([2], [3]), ([3], [4])]
    assert reshape_blocks((2, 6, 4, 4), (2, 96)) == [([0], [0]), ([1, 2, 3], [1])]
    assert reshape_blocks((2, 6), (2, 4)) is None


def test_components_union_find():
    lab = components(6, [(np.array([0, 3]), np.array([5, 4])), (np.array([5]), np.array([2]))])
    assert lab.tolist() == [0, 1, 0, 3, 3, 0]
