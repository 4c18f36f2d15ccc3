"""Names: the one map between ONNX names and torch attribute names, and fresh ONNX names.

Any string is a valid ONNX name (``half``, ``forward``, ``a.b/c:0``, ``μ``, ``""``, 300 characters);
torch attribute names must be ASCII identifiers that do not shadow a Module attribute, a Python
keyword, or (for ``forward``'s arguments) a name the generated code uses. So the torch side never
uses an ONNX name directly:

    torch name = NameTable.add(onnx name)     # safe, unique in its namespace, stable for the run
    onnx name  = NameTable.onnx_name(torch name)

and the map is bijective within each namespace. The importer keeps three tables
(:class:`TorchNames`): initializers -> attributes of the ``initializers`` container, ONNX nodes
(by position in ``graph.node``: node names may be empty) -> child modules of the root, graph
inputs -> ``forward`` arguments. Everything the user sees (plans, write-back, reports, metadata)
stays keyed by the original ONNX names; torch names are an implementation detail of one run.

On the ONNX side, :class:`OnnxNames` hands out names for tensors and nodes that passes create:
``fresh(base)`` is ``base`` if no value, initializer or node in the graph (subgraphs included) has
that name, else the first free ``base_1``, ``base_2``, ... It reads the names from the graph when
made, so names created by earlier passes or an earlier onnxprune run are never reused.
"""

from __future__ import annotations

import builtins
import hashlib
import keyword
import re
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import onnx

_NOT_IDENTIFIER = re.compile(r"[^0-9A-Za-z_]+")  # ASCII only: Python NFKC-folds other identifiers
MAX_LENGTH = 64  # longer names are cut and get a digest of the full name, so they stay distinct

# Attributes that appear on modules at run time: torch.nn.utils.parametrize and the fx code.
_RUNTIME_ATTRIBUTES = {"parametrizations", "original", "original0", "original1", "self"}


@lru_cache(maxsize=None)
def module_reserved() -> frozenset[str]:
    """Names a child or tensor of an ``nn.Module`` (or fx ``GraphModule``) must not take."""
    from torch import fx, nn

    graph = fx.Graph()
    graph.output(graph.placeholder("x"))
    names = set(dir(nn.Module())) | set(dir(fx.GraphModule(nn.Module(), graph)))
    return frozenset(names | set(keyword.kwlist) | set(keyword.softkwlist) | _RUNTIME_ATTRIBUTES)


@lru_cache(maxsize=None)
def argument_reserved() -> frozenset[str]:
    """Names a ``forward`` argument of generated fx code must not take (it would shadow a global)."""
    from torch.fx import graph as fx_graph

    extra = set(getattr(fx_graph, "_illegal_names", {})) | set(getattr(fx_graph, "_custom_builtins", {}))
    return frozenset(set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | extra
                     | {"self", "torch", "operator", "getitem", "fx_pytree", "pytree", "inf", "nan", "device"})


def identifier(name: str, fallback: str = "t") -> str:
    """An ASCII identifier derived from ``name`` (not yet checked for collisions)."""
    base = _NOT_IDENTIFIER.sub("_", name).strip("_") or fallback
    if base[0].isdigit():
        base = f"{fallback}_{base}"
    if len(base) > MAX_LENGTH:
        digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        base = f"{base[:MAX_LENGTH - 9]}_{digest}"
    return base


class NameTable:
    """A bijective map between ONNX-side keys and torch names in one torch namespace.

    Keys are ONNX names (or any hashable key, e.g. a node's position); ``add`` is idempotent.
    """

    def __init__(self, reserved: Iterable[str] = (), fallback: str = "t") -> None:
        self._reserved = frozenset(reserved)
        self._fallback = fallback
        self._to_torch: dict[Hashable, str] = {}
        self._to_onnx: dict[str, Hashable] = {}

    def add(self, key: Hashable, hint: str | None = None) -> str:
        """The torch name of ``key``, allocated on first use from ``hint`` (default: the key)."""
        if key in self._to_torch:
            return self._to_torch[key]
        base = identifier(str(key) if hint is None else hint, self._fallback)
        name, index = base, 0
        while name in self._to_onnx or name in self._reserved:
            index += 1
            name = f"{base}_{index}"
        self._to_torch[key] = name
        self._to_onnx[name] = key
        return name

    def torch_name(self, key: Hashable) -> str:
        return self._to_torch[key]

    def onnx_name(self, torch_name: str) -> Hashable:
        return self._to_onnx[torch_name]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._to_torch

    def __len__(self) -> int:
        return len(self._to_torch)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._to_torch)

    def items(self):
        return self._to_torch.items()


CONTAINER = "initializers"  # the root child that holds every initializer read through get_attr


@dataclass
class TorchNames:
    """The importer's name tables (see the module docstring)."""

    tensors: NameTable = field(default_factory=lambda: NameTable(module_reserved(), "t"))
    nodes: NameTable = field(default_factory=lambda: NameTable(module_reserved() | {CONTAINER}, "node"))
    inputs: NameTable = field(default_factory=lambda: NameTable(argument_reserved(), "input"))
    node_names: dict[int, str] = field(default_factory=dict)  # node position -> its ONNX name ("" allowed)

    def tensor(self, onnx_name: str) -> str:
        """The attribute of ``initializers`` holding initializer ``onnx_name``."""
        return self.tensors.add(onnx_name)

    def node(self, index: int, node: onnx.NodeProto) -> str:
        """The root child module converted from ``graph.node[index]``."""
        self.node_names[index] = node.name
        return self.nodes.add(index, node.name or node.op_type)

    def input(self, onnx_name: str) -> str:
        """The ``forward`` argument for graph input ``onnx_name``."""
        return self.inputs.add(onnx_name)

    def onnx_node(self, module_name: str) -> tuple[int, str]:
        """(position in graph.node, ONNX node name) of a root child module."""
        index = self.nodes.onnx_name(module_name)
        return index, self.node_names[index]


# ------------------------------------------------------------------------------ ONNX side


def graph_names(graph: onnx.GraphProto) -> set[str]:
    """Every value, initializer and node name in ``graph`` and its subgraphs."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names.update(init.name for init in graph.initializer)
    names.update(init.values.name for init in graph.sparse_initializer)
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= graph_names(sub)
    names.discard("")
    return names


def ir_graph_names(graph) -> set[str]:
    """Every value, initializer and node name in an onnx_ir graph and its subgraphs."""
    import onnx_ir as ir

    names = {v.name for v in (*graph.inputs, *graph.outputs) if v.name}
    names.update(name for name in graph.initializers)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.name:
            names.add(node.name)
        names.update(v.name for v in (*node.inputs, *node.outputs) if v is not None and v.name)
    return names


class OnnxNames:
    """Fresh ONNX names for new tensors and nodes; see the module docstring."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)

    @classmethod
    def of_proto(cls, graph: onnx.GraphProto) -> "OnnxNames":
        return cls(graph_names(graph))

    @classmethod
    def of_ir(cls, graph) -> "OnnxNames":
        return cls(ir_graph_names(graph))

    def fresh(self, base: str, sep: str = "_") -> str:
        """``base`` if unused, else ``base{sep}1``, ``base{sep}2``, ...; the name is then taken."""
        name, index = base, 0
        while not name or name in self.taken:
            index += 1
            name = f"{base}{sep}{index}"
        self.taken.add(name)
        return name

    def reserve(self, name: str) -> None:
        self.taken.add(name)
