"""Mapping and binding: which array runs each Einsum, how the arrays are tiled, and how the
cascade's Einsums are grouped into phases that overlap or take turns.

- Binding: by default each Einsum goes to the array that supports all its operations and
  keeps the most PEs busy (FuseMax: the tile's scores, max, exp and sums
  on the 2-D array; the running updates over tiles, whose points lack the key tile, on the 1-D
  one; FLAT: only contractions on its MAC array, the softmax on the 1-D unit).
- Spatial mapping: each array dimension takes a role, `key` (the key tile, M0) or `query`
  (the query tile, P0); an Einsum that lacks that index spreads the other role's index there
  if no other dimension does, else leaves the dimension one PE wide.
- Phases: `fused` puts every Einsum in one phase, whose intermediates stay on chip (what must
  outlive a pass is held in the buffer, or spilled when it does not fit); `per-array` starts a
  phase whenever the array changes, in fusion-group order, and every intermediate that
  crosses phases goes through DRAM (the unfused baseline).
- Overlap: `pipelined` arrays work on different tiles at once, so a phase takes as long as its
  busiest array (FuseMax's binding, which hides the 1-D array's running updates under the 2-D
  array's work); `serialized` arrays take turns.
- Tiles: M0 (the cascade's partition tile, else the array's key extent), P0 (query rows on
  the array), P1 (query tiles resident in the buffer at once; by default as many as fit,
  derived by attncc.accel.traffic from the buffer capacity).
- Residency: `residency.query_tiles` says how a P1 that is not given is chosen from what fits:
  `divisor` (default: rounded down to a divisor of the query tiles, the FuseMax artifact's
  rule, so every chunk is full) or `fit` (as many as fit; the last chunk may be short);
  `residency.key_tiles` is how many key tiles of the key-indexed inputs (K, V) the buffer
  reserves beside the query rows (default 1, the artifact's; 2 double-buffers them).

Options come from the architecture preset's `mapping:` section, overridden by the user's.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping as MappingType
from dataclasses import dataclass
from typing import Any

from attncc.accel.facts import CascadeFacts, EinsumFacts, cascade_facts
from attncc.accel.spec import Architecture, PEArray, SpecError
from attncc.ir import Cascade
from attncc.passes.fuse import fusion_groups

ROLES = ("key", "query")
OPTIONS = ("overlap", "fusion", "spatial", "bind", "tiles", "ranks", "phases", "residency")
RESIDENCY = {"query_tiles": "divisor", "key_tiles": 1}
"""Defaults of the `residency` option (the FuseMax artifact's rules)."""


class Overlap(enum.Enum):
    SERIALIZED = "serialized"
    PIPELINED = "pipelined"


class Fusion(enum.Enum):
    FUSED = "fused"
    PER_ARRAY = "per-array"


class Fill(enum.Enum):
    """How P1 follows from the query tiles that fit in the buffer."""

    DIVISOR = "divisor"
    FIT = "fit"


@dataclass(frozen=True)
class Mapping:
    """`bindings`: Einsum -> array (views of inputs and copies are loads, bound to none);
    `spatial`: array -> the index each of its dimensions spreads; `tiles`: index -> extent
    on the array; `query_tiles`: P1, or None to fill the buffer as `fill` says;
    `key_tiles`: key tiles of the key-indexed inputs the buffer reserves."""

    bindings: tuple[tuple[str, str], ...]
    spatial: tuple[tuple[str, tuple[str, ...]], ...]
    tiles: tuple[tuple[str, int], ...]
    overlap: Overlap
    phases: tuple[tuple[str, ...], ...]
    query_tiles: int | None
    fill: Fill = Fill.DIVISOR
    key_tiles: int = 1

    def array_of(self, einsum: str) -> str | None:
        return dict(self.bindings).get(einsum)

    def spatial_of(self, array: str) -> tuple[str, ...]:
        return dict(self.spatial)[array]

    def tile(self, index: str) -> int:
        return dict(self.tiles)[index]

    def describe(self) -> str:
        bound = ", ".join(f"{e}->{a}" for e, a in self.bindings)
        phases = " | ".join(" ".join(p) for p in self.phases)
        return f"{self.overlap.value}; phases: {phases}; binding: {bound}"


def plan(
    cascade: Cascade,
    arch: Architecture,
    options: MappingType[str, Any] | None = None,
    where: str = "mapping",
) -> tuple[CascadeFacts, Mapping]:
    """The cascade's facts and its mapping on `arch`: the preset's hints, then `options`."""
    merged = {**dict(arch.mapping), **dict(options or {})}
    for key in merged:
        if key not in OPTIONS:
            raise SpecError(
                f"{where}: {key}: unknown mapping option; options: {', '.join(OPTIONS)}"
            )
    ranks = _dict(merged.get("ranks", {}), f"{where}: ranks")
    facts = cascade_facts(cascade, ranks.get("key"), ranks.get("query"))
    spatial = _spatial(facts, arch, _dict(merged.get("spatial", {}), f"{where}: spatial"), where)
    tiles, query_tiles = _tiles(facts, arch, spatial, merged.get("tiles", {}), where)
    chosen = _bindings(facts, arch, spatial, tiles, merged.get("bind", {}), where)
    overlap = _enum(Overlap, merged.get("overlap", "pipelined"), f"{where}: overlap")
    fusion = _enum(Fusion, merged.get("fusion", "fused"), f"{where}: fusion")
    if "phases" in merged:
        phases = _given_phases(cascade, merged["phases"], where)
    else:
        phases = _phases(cascade, chosen, fusion)
    fill, key_tiles = _residency(merged.get("residency", {}), where)
    return facts, Mapping(
        tuple(chosen.items()),
        tuple(spatial.items()),
        tuple(tiles.items()),
        overlap,
        phases,
        query_tiles,
        fill,
        key_tiles,
    )


def spread(
    space: frozenset[str], spatial: tuple[str, ...], tiles: MappingType[str, int]
) -> tuple[str | None, ...]:
    """The index each array dimension spreads for an Einsum iterating `space`: the dimension's
    own role's index, else another role's index the Einsum has and no other dimension spreads
    (the running updates over tiles lack the key tile: they spread their queries over a 1-D
    array whose softmax rows spread keys); None leaves the dimension one PE wide."""
    chosen: list[str | None] = [index if index in space else None for index in spatial]
    for k, index in enumerate(chosen):
        if index is None:
            chosen[k] = next((c for c in tiles if c in space and c not in chosen), None)
    return tuple(chosen)


def efficiency(
    einsum: EinsumFacts, array: PEArray, spatial: tuple[str, ...], tiles: MappingType[str, int]
) -> float:
    """The share of the array's PEs an Einsum's points occupy: a dimension that spreads no
    index of the Einsum runs one PE wide; a tile narrower than the dimension leaves PEs idle."""
    share = 1.0
    for extent, index in zip(array.shape, spread(einsum.space, spatial, tiles), strict=True):
        used = min(extent, tiles[index]) if index is not None else 1
        share *= used / extent
    return share


def _spatial(
    facts: CascadeFacts, arch: Architecture, given: dict[str, Any], where: str
) -> dict[str, tuple[str, ...]]:
    roles = facts.roles
    index = {"key": (roles.inner or roles.key).lower(), "query": roles.query.lower()}
    spatial = {}
    for array in arch.arrays:
        chosen = given.get(array.name, ["key", "query"][: len(array.shape)])
        if not isinstance(chosen, list) or len(chosen) != len(array.shape):
            raise SpecError(
                f"{where}: spatial.{array.name}: one role per dimension of its shape "
                f"{list(array.shape)}, each key or query, got {chosen!r}"
            )
        for role in chosen:
            if role not in ROLES:
                raise SpecError(f"{where}: spatial.{array.name}: {role!r} is not key or query")
        spatial[array.name] = tuple(index[role] for role in chosen)
    for name in given:
        if arch.array(name) is None:
            raise SpecError(f"{where}: spatial.{name}: {arch.name} has no array {name}")
    return spatial


def _tiles(
    facts: CascadeFacts,
    arch: Architecture,
    spatial: dict[str, tuple[str, ...]],
    given: object,
    where: str,
) -> tuple[dict[str, int], int | None]:
    given = _dict(given, f"{where}: tiles")
    roles = facts.roles
    for key, value in given.items():
        if key not in ("M0", "P0", "P1"):
            raise SpecError(f"{where}: tiles.{key}: unknown tile; tiles: M0, P0, P1")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{where}: tiles.{key}: must be a positive integer, got {value!r}")
    key_index, query_index = (roles.inner or roles.key).lower(), roles.query.lower()

    def widest(index: str) -> int:
        extents = [
            extent
            for array in arch.arrays
            for extent, i in zip(array.shape, spatial[array.name], strict=True)
            if i == index
        ]
        return max(extents, default=1)

    key_tile = given.get("M0", widest(key_index))
    if roles.inner is not None:
        fixed = facts.cascade.rank(roles.inner)
        assert fixed is not None, "a partition's inner rank is declared"
        if not fixed.size.is_Integer:
            raise SpecError(
                f"{where}: the cascade's key tile {roles.inner} = {fixed.size} is not a number; "
                "partition with a fixed tile (partition(rank=M,tile=256))"
            )
        if "M0" in given and given["M0"] != int(fixed.size):
            raise SpecError(
                f"{where}: tiles.M0 = {given['M0']}, but the cascade tiles {roles.key} by "
                f"{int(fixed.size)} ({roles.inner}); re-partition the cascade or drop tiles.M0"
            )
        key_tile = int(fixed.size)
    tiles = {key_index: key_tile, query_index: given.get("P0", widest(query_index))}
    return tiles, given.get("P1")


def _bindings(
    facts: CascadeFacts,
    arch: Architecture,
    spatial: dict[str, tuple[str, ...]],
    tiles: dict[str, int],
    given: object,
    where: str,
) -> dict[str, str]:
    """Einsum -> array: the user's binding where given, else the best array for it."""
    bind = _given_bindings(facts, arch, _dict(given, f"{where}: bind"), where)
    chosen = {}
    for einsum in facts.einsums:
        if not einsum.ops:
            continue
        if einsum.name in bind:
            chosen[einsum.name] = _check_bound(einsum, bind[einsum.name], arch, where).name
        else:
            chosen[einsum.name] = _best_array(einsum, arch, spatial, tiles).name
    return chosen


def _given_bindings(
    facts: CascadeFacts, arch: Architecture, given: dict[str, Any], where: str
) -> dict[str, PEArray]:
    names = [e.name for e in facts.einsums]
    found = {}
    for name, array_name in given.items():
        if name not in names:
            raise SpecError(
                f"{where}: bind.{name}: {facts.cascade.name} has no Einsum {name}; "
                f"its Einsums: {', '.join(names)}"
            )
        array = arch.array(str(array_name))
        if array is None:
            known = ", ".join(a.name for a in arch.arrays)
            raise SpecError(
                f"{where}: bind.{name}: {arch.name} has no array {array_name!r}; arrays: {known}"
            )
        found[name] = array
    return found


def _check_bound(einsum: EinsumFacts, array: PEArray, arch: Architecture, where: str) -> PEArray:
    missing = sorted(einsum.kinds() - {o.kind for o in array.ops})
    if missing:
        raise SpecError(
            f"{where}: bind.{einsum.name}: Einsum {einsum.name} needs "
            f"{', '.join(missing)}, which array {array.name} of {arch.name} lacks "
            f"(it runs {', '.join(o.kind for o in array.ops)}); bind it to another "
            f"array or add the operation to arrays.{array.name}.ops"
        )
    return array


def _best_array(
    einsum: EinsumFacts,
    arch: Architecture,
    spatial: dict[str, tuple[str, ...]],
    tiles: dict[str, int],
) -> PEArray:
    able = [a for a in arch.arrays if a.supports(einsum.kinds())]
    if not able:
        raise SpecError(
            f"Einsum {einsum.name} needs {', '.join(sorted(einsum.kinds()))}; no array of "
            f"{arch.name} ({arch.source}) runs all of them: add the missing operations to "
            "an array's ops"
        )
    # The most busy PEs; on a tie the array it fills (RM on the 1-D array, not on one
    # column of the 2-D one).
    shares = {a.name: efficiency(einsum, a, spatial[a.name], tiles) for a in able}
    return max(able, key=lambda a: (a.pes * shares[a.name], shares[a.name]))


def _residency(given: object, where: str) -> tuple[Fill, int]:
    options = {**RESIDENCY, **_dict(given, f"{where}: residency")}
    for key in options:
        if key not in RESIDENCY:
            raise SpecError(
                f"{where}: residency.{key}: unknown field; fields: {', '.join(RESIDENCY)}"
            )
    fill = _enum(Fill, options["query_tiles"], f"{where}: residency.query_tiles")
    key_tiles = options["key_tiles"]
    if isinstance(key_tiles, bool) or not isinstance(key_tiles, int) or key_tiles < 1:
        raise SpecError(
            f"{where}: residency.key_tiles: must be a positive integer, got {key_tiles!r}"
        )
    return fill, key_tiles


@functools.lru_cache(maxsize=64)
def _group_order(cascade: Cascade) -> tuple[str, ...]:
    return tuple(name for group in fusion_groups(cascade) for name in group.einsums)


def _phases(
    cascade: Cascade, bindings: dict[str, str], fusion: Fusion
) -> tuple[tuple[str, ...], ...]:
    order = list(_group_order(cascade))
    if fusion is Fusion.FUSED:
        return (tuple(order),)
    phases: list[list[str]] = []
    current: str | None = None
    pending: list[str] = []
    for name in order:
        array = bindings.get(name)
        if array is None:
            pending.append(name)
            continue
        if phases and array == current:
            phases[-1].extend([*pending, name])
        else:
            phases.append([*pending, name])
            current = array
        pending = []
    if pending:
        if phases:
            phases[-1].extend(pending)
        else:
            phases.append(pending)
    return tuple(tuple(p) for p in phases)


def _given_phases(cascade: Cascade, given: object, where: str) -> tuple[tuple[str, ...], ...]:
    if not isinstance(given, list) or not all(isinstance(p, list) for p in given):
        raise SpecError(f"{where}: phases: a list of lists of Einsum names, got {given!r}")
    names = [e.tensor for e in cascade.einsums]
    placed = [str(n) for phase in given for n in phase]
    unknown = sorted(set(placed) - set(names))
    if unknown:
        raise SpecError(f"{where}: phases: no Einsum {', '.join(unknown)} in {cascade.name}")
    if sorted(placed) != sorted(names):
        missing = sorted(set(names) - set(placed))
        twice = sorted({n for n in placed if placed.count(n) > 1})
        raise SpecError(
            f"{where}: phases: every Einsum exactly once; missing {missing}, repeated {twice}"
        )
    phase_of = {str(n): k for k, phase in enumerate(given) for n in phase}
    for einsum in cascade.einsums:
        for read in einsum.reads:
            if read in phase_of and phase_of[read] > phase_of[einsum.tensor]:
                raise SpecError(
                    f"{where}: phases: {einsum.tensor} (phase {phase_of[einsum.tensor] + 1}) "
                    f"reads {read}, which runs later (phase {phase_of[read] + 1})"
                )
    return tuple(tuple(str(n) for n in phase) for phase in given)


def _dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, MappingType):
        raise SpecError(f"{where}: expected a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _enum(kind: type[enum.Enum], value: object, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(v.value) for v in kind)
        raise SpecError(f"{where}: {value!r} is not one of {choices}") from None
