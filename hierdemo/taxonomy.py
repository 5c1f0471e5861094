"""Taxonomy trees: a networkx arborescence with path-qualified node ids.

Node ids are the ``/``-joined names from the top level down (``clothing/tops/shirt``), so the same display name
may appear under two parents ("other" under "birds" and under "fish" are two nodes). The virtual root has id
``""`` and is not a class.

Levels and ragged trees
-----------------------
Level ``l`` (0-based, coarse to fine) holds the nodes at depth ``l + 1``. The number of levels ``L`` is the depth of
the deepest leaf. A leaf at depth ``d < L`` is *carried down*: it is also the class of its own path at every level
below ``d``, where it is an only child of itself. So every leaf has a path of exactly ``L`` entries, level ``l``
has ``len(levels[l])`` classes, and every level is a partition of the leaves. Losses and metrics work on these
level-wise class indices.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import networkx as nx
import torch

ROOT = ""
SEP = "/"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
IGNORED_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"})


class TaxonomyError(ValueError):
    """A taxonomy that cannot be used, with a message meant for the user."""


def is_ignored_name(name: str) -> bool:
    """Hidden and OS-generated files and folders (``.DS_Store``, ``__MACOSX``, ``._x``...)."""
    return name in IGNORED_NAMES or name.startswith(".")


def display_name(name: str) -> str:
    """Human-readable class name from a folder or key name: ``ankle_boot`` -> ``ankle boot``."""
    return " ".join(name.replace("_", " ").split())


@dataclass(frozen=True)
class LevelStructure:
    """Index tensors describing the levels, ready for the pure loss and metric functions."""

    parents: tuple[torch.Tensor, ...]  # parents[l][j] = index at level l-1 of class j's parent (zeros at l=0)
    node_index: tuple[torch.Tensor, ...]  # node_index[l][j] = global node index of class j at level l
    leaf_paths: torch.Tensor  # (n_leaves, L) level-class index of each leaf's path
    num_nodes: int

    @property
    def classes_per_level(self) -> list[int]:
        return [len(p) for p in self.parents]


class Taxonomy:
    """An immutable class tree. Build it with one of the ``from_*`` constructors."""

    def __init__(self, graph: nx.DiGraph):
        self.graph = graph
        _validate(graph)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_nested(cls, tree: Mapping[str, Any]) -> Taxonomy:
        """From a nested dict ``{"animal": {"bird": {"flamingo": {}}}}``. Leaves may be ``{}``, ``None`` or a list
        of leaf names (``{"bird": ["flamingo", "owl"]}``)."""
        graph = _new_graph()

        def add(parent: str, children: Any) -> None:
            if children is None:
                return
            if isinstance(children, (list, tuple)):
                children = {str(c): None for c in children}
            if not isinstance(children, Mapping):
                raise TaxonomyError(f"expected a mapping or list under {parent or 'the root'!r}, got {children!r}")
            for raw, sub in children.items():
                node = _add_child(graph, parent, str(raw))
                add(node, sub)

        add(ROOT, tree)
        return cls(graph)

    @classmethod
    def from_paths(cls, paths: Iterable[str | Sequence[str]]) -> Taxonomy:
        """From label paths such as ``"animal/bird/flamingo"`` (or sequences of names). Each path ends at a leaf."""
        graph = _new_graph()
        for path in paths:
            parts = [p.strip() for p in (path.split(SEP) if isinstance(path, str) else path)]
            parts = [p for p in parts if p]
            parent = ROOT
            for part in parts:
                parent = _add_child(graph, parent, part)
        return cls(graph)

    @classmethod
    def from_edges(cls, edges: Iterable[tuple[str, str]]) -> Taxonomy:
        """From ``(parent_name, child_name)`` pairs where names are unique; a parent never seen as a child is top
        level. Cycles and nodes with two parents are refused."""
        edges = [(p.strip(), c.strip()) for p, c in edges]
        names = nx.DiGraph(edges)
        if not nx.is_directed_acyclic_graph(names):
            cycle = " -> ".join(a for a, _ in nx.find_cycle(names))
            raise TaxonomyError(f"the taxonomy has a cycle: {cycle}")
        multi = sorted(n for n, d in names.in_degree() if d > 1)
        if multi:
            raise TaxonomyError(f"these classes have more than one parent: {', '.join(multi)}")
        tops = [n for n, d in names.in_degree() if d == 0]
        return cls.from_paths(p for t in tops for p in _name_paths(names, t))

    @classmethod
    def from_folder(cls, root: str | Path, strict: bool = True) -> Taxonomy:
        """From a nested image folder: sub-folders are classes, leaf folders hold the images. With ``strict``, a
        leaf folder without images is an error; otherwise it is left out."""
        root = Path(root)
        if not root.is_dir():
            raise TaxonomyError(f"{root} is not a folder")
        paths, empty = [], []
        for folder, has_images in _walk_leaf_folders(root):
            rel = folder.relative_to(root).as_posix()
            (paths if has_images else empty).append(rel)
        if empty and strict:
            raise TaxonomyError("these class folders hold no images: " + ", ".join(sorted(empty)))
        if not paths:
            raise TaxonomyError(f"no class folders with images found in {root}")
        return cls.from_paths(paths)

    @classmethod
    def from_csv_text(cls, text: str) -> Taxonomy:
        """From CSV: one label path per row (``animal/bird/flamingo`` or ``animal,bird,flamingo``), or a
        ``parent,child`` edge list when the header is exactly ``parent,child``."""
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
        if rows and [c.strip().lower() for c in rows[0]] == ["parent", "child"]:
            return cls.from_edges((r[0], r[1]) for r in rows[1:])
        return cls.from_paths(
            r[0] if len(r) == 1 else [c for c in r if c.strip()] for r in rows
        )

    @classmethod
    def from_indented_text(cls, text: str) -> Taxonomy:
        """From an outline where indentation gives depth (spaces or tabs, ``-``/``*`` bullets allowed)."""
        paths: list[list[str]] = []
        stack: list[tuple[int, str]] = []
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            indent = len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())
            name = line.strip().lstrip("-*").strip()
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, name))
            paths.append([n for _, n in stack])
        # every outline line is a node; from_paths makes each a path, internal ones are prefixes of others
        return cls.from_paths(paths)

    @classmethod
    def parse(cls, text: str) -> Taxonomy:
        """Guess the format of pasted text: JSON, YAML mapping, CSV/paths, or an indented outline."""
        stripped = text.strip()
        if not stripped:
            raise TaxonomyError("the taxonomy text is empty")
        if stripped[0] in "{[":
            try:
                data = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise TaxonomyError(f"invalid JSON taxonomy: {exc}") from None
            return cls.from_nested(data) if isinstance(data, Mapping) else cls.from_paths(data)
        lines = [ln for ln in stripped.splitlines() if ln.strip()]
        if any(ln[:1].isspace() for ln in lines):
            if all(ln.rstrip().endswith(":") or ":" not in ln for ln in lines) and any(
                ln.rstrip().endswith(":") for ln in lines
            ):
                import yaml

                return cls.from_nested(yaml.safe_load(stripped))
            return cls.from_indented_text(stripped)
        return cls.from_csv_text(stripped)

    @classmethod
    def from_file(cls, path: str | Path) -> Taxonomy:
        """From ``.json``/``.yaml``/``.yml`` (nested mapping), ``.csv`` or ``.txt`` (paths or outline)."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            return cls.from_nested(yaml.safe_load(text))
        if path.suffix.lower() == ".csv":
            return cls.from_csv_text(text)
        return cls.parse(text)

    # ------------------------------------------------------------------ serialisation
    def to_nested(self, node: str = ROOT) -> dict[str, Any]:
        """Nested dict of raw names, the inverse of :meth:`from_nested`."""
        return {self.graph.nodes[c]["raw"]: self.to_nested(c) for c in self.children(node)}

    def to_json(self) -> str:
        return json.dumps(self.to_nested(), ensure_ascii=False, indent=1)

    @cached_property
    def fingerprint(self) -> str:
        """Short content hash of the tree (ids, order and display names)."""
        canon = json.dumps([[n, self.name(n)] for n in self.nodes], ensure_ascii=False)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Taxonomy) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"Taxonomy({len(self.leaves)} leaves, {self.num_levels} levels, {self.fingerprint})"

    # ------------------------------------------------------------------ tree queries
    def children(self, node: str) -> list[str]:
        return list(self.graph.successors(node))

    def parent(self, node: str) -> str:
        return next(iter(self.graph.predecessors(node)))

    def name(self, node: str) -> str:
        return self.graph.nodes[node]["name"]

    def depth(self, node: str) -> int:
        return self.graph.nodes[node]["depth"]

    def ancestors(self, node: str) -> list[str]:
        """Path from the top level down to ``node`` inclusive (no virtual root, no carry-down)."""
        out = []
        while node != ROOT:
            out.append(node)
            node = self.parent(node)
        return out[::-1]

    @cached_property
    def nodes(self) -> list[str]:
        """All class nodes (not the root) in depth-first order; the global node index is the position here."""
        return [n for n in nx.dfs_preorder_nodes(self.graph, ROOT) if n != ROOT]

    @cached_property
    def node_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    @cached_property
    def leaves(self) -> list[str]:
        return [n for n in self.nodes if self.graph.out_degree(n) == 0]

    @cached_property
    def num_levels(self) -> int:
        return max(self.depth(n) for n in self.leaves)

    @cached_property
    def levels(self) -> list[list[str]]:
        """Classes of each level, coarse to fine, with shallow leaves carried down."""
        return [
            [n for n in self.nodes if self.depth(n) == d or (self.depth(n) < d and self.graph.out_degree(n) == 0)]
            for d in range(1, self.num_levels + 1)
        ]

    @cached_property
    def level_index(self) -> list[dict[str, int]]:
        return [{n: i for i, n in enumerate(level)} for level in self.levels]

    def path(self, leaf: str) -> list[str]:
        """The ``num_levels`` classes of a leaf's path, coarse to fine (shallow leaves repeated at the end)."""
        anc = self.ancestors(leaf)
        return anc + [leaf] * (self.num_levels - len(anc))

    def path_indices(self, leaf: str) -> list[int]:
        return [self.level_index[lvl][n] for lvl, n in enumerate(self.path(leaf))]

    def level_parent(self, level: int, node: str) -> str:
        """The class at ``level - 1`` above ``node`` (itself for a carried-down leaf)."""
        return node if self.depth(node) < level + 1 else self.parent(node)

    def siblings(self, level: int, node: str) -> list[str]:
        """Classes at ``level`` sharing ``node``'s level parent, ``node`` included, in level order."""
        if level == 0:
            return list(self.levels[0])
        up = self.level_parent(level, node)
        return [n for n in self.levels[level] if self.level_parent(level, n) == up]

    @cached_property
    def structure(self) -> LevelStructure:
        parents = [torch.zeros(len(self.levels[0]), dtype=torch.long)]
        for lvl in range(1, self.num_levels):
            up = self.level_index[lvl - 1]
            parents.append(torch.tensor([up[self.level_parent(lvl, n)] for n in self.levels[lvl]], dtype=torch.long))
        node_index = [torch.tensor([self.node_index[n] for n in level], dtype=torch.long) for level in self.levels]
        leaf_paths = torch.tensor([self.path_indices(leaf) for leaf in self.leaves], dtype=torch.long)
        return LevelStructure(tuple(parents), tuple(node_index), leaf_paths, len(self.nodes))

    def leaf_for_path_indices(self, indices: Sequence[int]) -> str:
        """Finest class of a level-index path."""
        return self.levels[-1][int(indices[-1])]

    def prompt_parent(self, node: str) -> str | None:
        """Display name of the node's parent, or ``None`` at the top level (for hierarchical prompts)."""
        up = self.parent(node)
        return None if up == ROOT else self.name(up)


# ---------------------------------------------------------------------- helpers
def _new_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_node(ROOT, name="", raw="", depth=0)
    return graph


def _add_child(graph: nx.DiGraph, parent: str, raw: str) -> str:
    raw = raw.strip()
    if not raw:
        raise TaxonomyError(f"empty class name under {parent or 'the root'!r}")
    if SEP in raw:
        raise TaxonomyError(f"class name {raw!r} contains '{SEP}'")
    node = raw if parent == ROOT else f"{parent}{SEP}{raw}"
    if node not in graph:
        graph.add_node(node, name=display_name(raw), raw=raw, depth=graph.nodes[parent]["depth"] + 1)
        graph.add_edge(parent, node)
    return node


def _name_paths(names: nx.DiGraph, top: str) -> list[list[str]]:
    leaves = [n for n in nx.descendants(names, top) | {top} if names.out_degree(n) == 0]
    return [nx.shortest_path(names, top, leaf) for leaf in leaves]


def _walk_leaf_folders(root: Path) -> Iterable[tuple[Path, bool]]:
    """Yield ``(folder, has_images)`` for each folder under ``root`` without class sub-folders."""
    subdirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and not is_ignored_name(p.name)),
        key=lambda p: p.name.lower(),
    )
    for sub in subdirs:
        inner = [p for p in sub.iterdir() if p.is_dir() and not p.is_symlink() and not is_ignored_name(p.name)]
        if inner:
            yield from _walk_leaf_folders(sub)
        else:
            has_images = any(
                f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not is_ignored_name(f.name) for f in sub.iterdir()
            )
            yield sub, has_images


def _validate(graph: nx.DiGraph) -> None:
    if not nx.is_arborescence(graph):
        raise TaxonomyError("the taxonomy is not a tree (a class has two parents or there is a cycle)")
    for node in graph.nodes:
        seen: dict[str, str] = {}
        for child in graph.successors(node):
            key = graph.nodes[child]["name"].casefold()
            if key in seen:
                where = graph.nodes[node]["raw"] or "the top level"
                raise TaxonomyError(
                    f"duplicate class names under {where!r}: {seen[key]!r} and {graph.nodes[child]['raw']!r}"
                )
            seen[key] = graph.nodes[child]["raw"]
    leaves = [n for n in graph.nodes if n != ROOT and graph.out_degree(n) == 0]
    if len(leaves) < 2:
        only = f" (only {graph.nodes[leaves[0]]['raw']!r})" if leaves else ""
        raise TaxonomyError(f"a taxonomy needs at least two classes{only}")
