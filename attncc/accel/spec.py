"""Architecture specs: a 2-D and a 1-D array of processing elements, a global buffer, DRAM,
a clock, a data width and an energy table, read from YAML and checked field by field.

A spec says what each PE can do and what it costs: `ops` maps an operation kind of the cost
analysis (`attncc.analysis.cost.OP_KINDS`, plus `mac`) to its occupancy in cycles, written
either as a number (a native action of that name: `max: 1`, `select: 0` for a multiplexer in
the PE's output stage) or as the native actions it is built from (`exp: {mac: 6}`: FuseMax
evaluates exp as a degree-6 polynomial, six MACs in sequence, so the Einsum e^(x - m) costs
the paper's 6 MACs + 1 add). An Einsum bound to an array that lacks one of its operations is
an error, not a guess. `issue` says how a PE runs an Einsum's operations: one after another
(`sequential`, FuseMax's PEs) or each kind on its own pipelined unit (`pipelined`, FLAT's
1-D softmax unit with its dedicated exp). `registers` says how many register-file reads and
writes each busy PE cycle makes (default two operands read, one result written). Every number
in the energy table is in picojoules per action; see presets/*.yaml for where each default
comes from.

A spec may start from another: `base: flat` (a preset) or `base: other.yaml` (a file, from the
spec's folder) takes that spec and deep-merges this one over it (mappings merge key by key,
anything else is replaced), then checks the merged result like any spec.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from attncc.analysis.cost import OP_KINDS
from attncc.errors import AttnccError

OPERATION_KINDS: frozenset[str] = frozenset(OP_KINDS.values()) | {"mac"}
"""Operation kinds a PE may support: those the cost analysis counts."""

MEMORY_ACTIONS: tuple[str, ...] = (
    "register_read",
    "register_write",
    "buffer_read",
    "buffer_write",
    "dram_read",
    "dram_write",
)
"""Energy actions every spec prices, per word of `data_bytes`."""

PRESETS: tuple[str, ...] = ("fusemax", "flat", "unfused")

REGISTERS: dict[str, float] = {"reads": 2.0, "writes": 1.0}
"""Register-file accesses per busy PE cycle by default: two operands read, one result
written (a multiply-accumulate's third operand stays in its accumulator)."""


class SpecError(AttnccError):
    """An architecture, mapping or sweep spec that is malformed; names the file and field."""


class Issue(enum.Enum):
    SEQUENTIAL = "sequential"
    PIPELINED = "pipelined"


@dataclass(frozen=True)
class OpCost:
    """How a PE executes one operation: `cycles` of occupancy, made of native `actions`
    (name, how many), each priced by the energy table."""

    kind: str
    cycles: float
    actions: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class PEArray:
    """`shape`: PEs along each dimension ((256, 256) or (256,)); `ops`: what each PE runs;
    `register_reads` and `register_writes`: register-file accesses per busy PE cycle."""

    name: str
    shape: tuple[int, ...]
    ops: tuple[OpCost, ...]
    issue: Issue
    register_reads: float = REGISTERS["reads"]
    register_writes: float = REGISTERS["writes"]

    @property
    def pes(self) -> int:
        total = 1
        for extent in self.shape:
            total *= extent
        return total

    def op(self, kind: str) -> OpCost | None:
        return next((o for o in self.ops if o.kind == kind), None)

    def supports(self, kinds: set[str]) -> bool:
        return all(self.op(kind) is not None for kind in kinds)


@dataclass(frozen=True)
class Buffer:
    """The global buffer: `capacity` bytes in `banks` banks, each `bank_width` bytes a cycle."""

    capacity: int
    banks: int
    bank_width: int

    @property
    def bytes_per_cycle(self) -> int:
        return self.banks * self.bank_width


@dataclass(frozen=True)
class Architecture:
    """A whole accelerator. `dram_bandwidth` in bytes/s, `clock` in Hz, `data_bytes` per word;
    `energy` in pJ per action; `mapping` holds the design's default mapping hints (see
    attncc.accel.mapping); `source` names the file the spec came from."""

    name: str
    arrays: tuple[PEArray, ...]
    buffer: Buffer
    dram_bandwidth: float
    clock: float
    data_bytes: int
    energy: tuple[tuple[str, float], ...]
    # Mapping hints hold YAML lists and mappings: compared, but left out of the hash.
    mapping: tuple[tuple[str, Any], ...] = field(default=(), hash=False)
    source: str | None = None

    def array(self, name: str) -> PEArray | None:
        return next((a for a in self.arrays if a.name == name), None)

    def energy_of(self, action: str) -> float:
        return dict(self.energy)[action]


def load_architecture(source: str | Path) -> Architecture:
    """A preset by name (`fusemax`, `flat`, `unfused`) or a YAML file, validated."""
    data, where = load_spec_data(source)
    return architecture_from_dict(data, where)


def load_spec_data(source: str | Path, folder: Path | None = None) -> tuple[object, str]:
    """The parsed spec of a preset or a file (relative to `folder`), its `base` merged in,
    and where it came from."""
    path, where = _locate(source, folder)
    data = _parse(preset_text(str(source)) if path is None else path.read_text(), where)
    return resolve_base(data, where, path.parent if path is not None else None), where


def read_yaml(path: str | Path) -> object:
    """A YAML file's data; a missing file or bad YAML is a SpecError naming the file and line."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise SpecError(f"{path}: cannot read: {error.strerror}") from None
    return _parse(text, str(path))


def preset_text(name: str) -> str:
    if name not in PRESETS:
        raise SpecError(f"no preset named {name!r}; presets: {', '.join(PRESETS)}")
    return resources.files("attncc.accel").joinpath(f"presets/{name}.yaml").read_text()


def resolve_base(
    data: object, where: str, folder: Path | None = None, seen: tuple[str, ...] = ()
) -> object:
    """`data` deep-merged over the spec its `base` names (recursively), without `base`."""
    if not isinstance(data, Mapping) or "base" not in data:
        return data
    base = data["base"]
    if not isinstance(base, str):
        raise SpecError(f"{where}: base: a preset name or a YAML file, got {base!r}")
    path, base_where = _locate(base, folder, f"{where}: base: ")
    chain = (*seen, where)
    if base_where in chain:
        cycle = " -> ".join((*chain[chain.index(base_where) :], base_where))
        raise SpecError(f"{where}: base: {base} inherits from itself ({cycle})")
    text = preset_text(base) if path is None else path.read_text()
    parent = path.parent if path is not None else None
    inherited = resolve_base(_parse(text, base_where), base_where, parent, chain)
    if not isinstance(inherited, Mapping):
        raise SpecError(f"{base_where}: expected a mapping of fields (the base of {where})")
    return _merge(inherited, {k: v for k, v in data.items() if k != "base"})


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        if isinstance(below, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


def _locate(source: str | Path, folder: Path | None, prefix: str = "") -> tuple[Path | None, str]:
    """The file a spec name means (None for a preset) and how errors name it."""
    if isinstance(source, str) and source in PRESETS:
        return None, f"preset {source}"
    path = Path(source)
    if folder is not None and not path.is_absolute():
        path = folder / path
    if not path.is_file():
        raise SpecError(
            f"{prefix}no architecture file {str(source)!r} and no preset of that name; "
            f"presets: {', '.join(PRESETS)}"
        )
    return path, str(path)


def _parse(text: str, where: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(f"{where}{line}: not valid YAML: {problem}") from None


def architecture_from_dict(data: object, where: str = "spec") -> Architecture:
    """Validate a parsed spec (its `base`, if any, from `where`'s folder when `where` is a
    file); every error names `where` and the field."""
    folder = Path(where).parent if Path(where).is_file() else None
    data = resolve_base(data, where, folder)
    fields = _Fields(where)
    top = fields.mapping(data, "")
    fields.known(
        top,
        "",
        ("name", "clock_hz", "data_bytes", "dram", "buffer", "arrays", "energy_pj", "mapping"),
    )
    arrays_data = fields.mapping(fields.required(top, "arrays", ""), "arrays")
    if not arrays_data:
        raise SpecError(f"{where}: arrays: name at least one PE array (2d, 1d)")
    arrays = tuple(_array(fields, str(name), body) for name, body in arrays_data.items())
    dram = fields.mapping(fields.required(top, "dram", ""), "dram")
    fields.known(dram, "dram", ("bandwidth_bytes_per_s",))
    buffer = fields.mapping(fields.required(top, "buffer", ""), "buffer")
    fields.known(buffer, "buffer", ("capacity_bytes", "banks", "bank_width_bytes"))
    energy = _energy(fields, fields.required(top, "energy_pj", ""), arrays)
    mapping = fields.mapping(top.get("mapping", {}), "mapping")
    return Architecture(
        name=str(top.get("name", Path(where).stem)),
        arrays=arrays,
        buffer=Buffer(
            capacity=int(fields.positive(buffer, "capacity_bytes", "buffer")),
            banks=int(fields.positive(buffer, "banks", "buffer", integer=True)),
            bank_width=int(fields.positive(buffer, "bank_width_bytes", "buffer", integer=True)),
        ),
        dram_bandwidth=fields.positive(dram, "bandwidth_bytes_per_s", "dram"),
        clock=fields.positive(top, "clock_hz", ""),
        data_bytes=int(fields.positive(top, "data_bytes", "", integer=True)),
        energy=energy,
        mapping=tuple(mapping.items()),
        source=where,
    )


def _array(fields: _Fields, name: str, body: object) -> PEArray:
    path = f"arrays.{name}"
    data = fields.mapping(body, path)
    fields.known(data, path, ("shape", "ops", "issue", "registers"))
    shape_data = fields.required(data, "shape", path)
    if not isinstance(shape_data, list) or not 1 <= len(shape_data) <= 2:
        raise SpecError(
            f"{fields.where}: {path}.shape: a list of one or two PE counts, e.g. [256, 256], "
            f"got {shape_data!r}"
        )
    shape = tuple(
        int(fields.number(extent, f"{path}.shape[{k}]", positive=True, integer=True))
        for k, extent in enumerate(shape_data)
    )
    ops_data = fields.mapping(fields.required(data, "ops", path), f"{path}.ops")
    ops = tuple(_op(fields, f"{path}.ops", str(kind), cost) for kind, cost in ops_data.items())
    issue_text = data.get("issue", "sequential")
    try:
        issue = Issue(issue_text)
    except ValueError:
        choices = ", ".join(i.value for i in Issue)
        raise SpecError(
            f"{fields.where}: {path}.issue: {issue_text!r} is not one of {choices}"
        ) from None
    registers = fields.mapping(data.get("registers", {}), f"{path}.registers")
    fields.known(registers, f"{path}.registers", tuple(REGISTERS))
    reads, writes = (
        fields.number(registers.get(k, REGISTERS[k]), f"{path}.registers.{k}", positive=False)
        for k in REGISTERS
    )
    return PEArray(name, shape, ops, issue, reads, writes)


def _op(fields: _Fields, path: str, kind: str, cost: object) -> OpCost:
    if kind not in OPERATION_KINDS:
        known = ", ".join(sorted(OPERATION_KINDS))
        raise SpecError(f"{fields.where}: {path}.{kind}: unknown operation; operations: {known}")
    if isinstance(cost, Mapping):
        actions = tuple(
            (str(action), fields.number(count, f"{path}.{kind}.{action}", positive=True))
            for action, count in cost.items()
        )
        if not actions:
            raise SpecError(f"{fields.where}: {path}.{kind}: name the actions it is built from")
        return OpCost(kind, sum(count for _, count in actions), actions)
    cycles = fields.number(cost, f"{path}.{kind}", positive=False)
    return OpCost(kind, cycles, ((kind, 1.0),))


def _energy(
    fields: _Fields, body: object, arrays: tuple[PEArray, ...]
) -> tuple[tuple[str, float], ...]:
    table = fields.mapping(body, "energy_pj")
    values = {str(k): fields.number(v, f"energy_pj.{k}", positive=False) for k, v in table.items()}
    needed = dict.fromkeys(MEMORY_ACTIONS, "every spec")
    for array in arrays:
        for op in array.ops:
            for action, _ in op.actions:
                needed.setdefault(action, f"arrays.{array.name}.ops.{op.kind}")
    missing = [
        f"{action} (used by {user})" for action, user in needed.items() if action not in values
    ]
    if missing:
        raise SpecError(f"{fields.where}: energy_pj: missing {', '.join(missing)}")
    return tuple(sorted(values.items()))


@dataclass(frozen=True)
class _Fields:
    """Field access that reports `where` (the file) and the dotted field path."""

    where: str

    def mapping(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            name = path or "the top level"
            raise SpecError(f"{self.where}: {name}: expected a mapping of fields, got {value!r}")
        return {str(k): v for k, v in value.items()}

    def required(self, data: Mapping[str, Any], key: str, path: str) -> Any:
        if key not in data:
            raise SpecError(f"{self.where}: {_join(path, key)}: missing (required)")
        return data[key]

    def known(self, data: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in data:
            if key not in allowed:
                raise SpecError(
                    f"{self.where}: {_join(path, key)}: unknown field; fields here: "
                    f"{', '.join(allowed)}"
                )

    def positive(
        self, data: Mapping[str, Any], key: str, path: str, *, integer: bool = False
    ) -> float:
        return self.number(
            self.required(data, key, path), _join(path, key), positive=True, integer=integer
        )

    def number(self, value: object, path: str, *, positive: bool, integer: bool = False) -> float:
        if isinstance(value, str):
            # YAML 1.1 reads 9.4e8 (no sign in the exponent) as text.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{self.where}: {path}: expected a number, got {value!r}")
        if integer and value != int(value):
            raise SpecError(f"{self.where}: {path}: expected an integer, got {value!r}")
        if value < 0 or (positive and value == 0):
            bound = "positive" if positive else "zero or more"
            raise SpecError(f"{self.where}: {path}: must be {bound}, got {value!r}")
        return float(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
