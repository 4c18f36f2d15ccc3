"""Data produced by group analysis and consumed by the passes (all keyed by ONNX names).

Channel c of a group occupies, in every tensor axis ``TensorAxis(name, axis, start, stop, block)``
listed for it, the elements ``start + c*block ... start + (c+1)*block - 1`` along ``axis``
(``block`` > 1 where a Flatten/Reshape spread each channel over H*W features).

States say what a removed channel looks like where it is read:

    ZERO     exactly 0 once the group's gate tensors are zeroed (the masked reference)
    UNIFORM  one constant per channel, the same at every position (foldable into a bias)
    VARYING  anything else (removing the channel would change the output)
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterable

import numpy as np


class State(enum.IntEnum):
    ZERO = 0
    UNIFORM = 1
    VARYING = 2


@dataclasses.dataclass(frozen=True)
class TensorAxis:
    """Elements of initializer ``name`` along ``axis`` that belong to a group's channels."""

    name: str
    axis: int
    start: int
    stop: int
    block: int = 1

    @property
    def channels(self) -> int:
        return (self.stop - self.start) // self.block

    def element_indices(self, channels: Iterable[int]) -> np.ndarray:
        """Element indices along ``axis`` of the given channels (channel c -> its block)."""
        channels = np.asarray(list(channels), dtype=np.int64)
        offsets = np.arange(self.block, dtype=np.int64)
        return (self.start + channels[:, None] * self.block + offsets[None, :]).reshape(-1)


@dataclasses.dataclass(frozen=True)
class Piece:
    """Channels ``start:stop`` of a group, each worth ``block`` units of some integer."""

    group: str
    start: int
    stop: int
    block: int = 1


@dataclasses.dataclass(frozen=True)
class IntEdit:
    """An integer in a node's constant input (or attribute) that counts channels.

    After pruning: ``new = old - sum(p.block * removed(p.group in p.start:p.stop))``. Used for
    Split sizes, Slice starts/ends, Reshape targets, Resize sizes and depthwise ``group``.
    """

    node: str
    input_index: int  # -1: the integer attribute ``attribute``
    entry: int
    pieces: tuple[Piece, ...]
    attribute: str = ""


@dataclasses.dataclass(frozen=True)
class PaddedNorm:
    """A LayerNormalization over the last axis whose channels (``pieces``, in order) may be pruned:
    its input is padded back to the full width with zeros so its statistics stay those of the
    masked model (``hidden_norm="pad"``)."""

    node: str
    rank: int
    pieces: tuple[Piece, ...]


@dataclasses.dataclass(frozen=True)
class FoldSite:
    """A consumer whose input ``value`` may carry a constant for a removed channel.

    Removing the channel drops ``value[c] * weight[:, c]`` from the consumer's output; when that
    value is a nonzero constant the pass adds it to the consumer's bias instead.
    """

    node: str
    value: str
    value_axis: int
    weight: TensorAxis
    out_axis: int
    gate: State  # what a removed channel is here in the masked reference
    foldable: bool  # a uniform constant here can be moved into the consumer's bias exactly


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be kept or removed together."""

    id: str
    size: int
    producers: tuple[TensorAxis, ...]  # output-side slices: weights, biases, norm params, constants
    consumers: tuple[TensorAxis, ...]  # input-side slices of the next layers' weights
    gate_tensors: tuple[TensorAxis, ...]  # zeroing these slices zeroes the channel everywhere
    activations: tuple[str, ...]
    prunable: bool
    reason: str = ""
    dead_tests: tuple[TensorAxis, ...] = ()  # producer weights: all zero for c -> c is a constant
    folds: tuple[FoldSite, ...] = ()
    nodes: tuple[str, ...] = ()  # nodes whose weights are sliced for this group
    branch: str | None = None  # a residual branch holding the whole group (it may then be emptied)
    chunks: int = 1  # a grouped Conv's output: keep equally many channels in each of `chunks` runs
    approximate: str = ""  # why removing channels is close to, not equal to, the masked reference

    def chunk_of(self, channel: int) -> int:
        return channel // (self.size // self.chunks)


@dataclasses.dataclass(frozen=True)
class ResidualBranch:
    """``add_node`` computes ``skip_value + branch_output``; the branch is ``nodes``."""

    id: str
    add_node: str
    skip_value: str
    branch_output: str
    nodes: tuple[str, ...]
    gate_tensors: tuple[TensorAxis, ...]
    macs: int
    channel_axis: int = 1  # the branch output's channels, for a branch replaced by a constant
    channels: tuple[Piece, ...] = ()


@dataclasses.dataclass(frozen=True)
class MacTerm:
    """MACs of one node as ``macs * kept_in/C_in * kept_out/C_out`` over its channel pieces."""

    node: str
    macs: int
    inputs: tuple[Piece, ...]  # empty: the input side is not pruned
    outputs: tuple[Piece, ...]
    depthwise: bool = False  # input and output are the same channels: count them once
