"""Accelerator design studies: an analytical model of cascades on spatial arrays.

An architecture spec (a 2-D and a 1-D array of PEs, a global buffer, DRAM, an energy table;
`load_architecture`, presets `fusemax`, `flat`, `unfused`), a mapping that binds Einsums to
arrays and groups them into phases (`plan`), and the model (`evaluate`), which reads
everything from the cascade's analyses: operation counts, passes, footprints, mask densities.
`attncc.accel.studies` reproduces the FuseMax paper's evaluation; `attncc.accel.sweep` sweeps
parameters in parallel processes or on a Ray or Dask cluster.
"""

from attncc.accel.mapping import Fusion, Mapping, Overlap, plan
from attncc.accel.model import EinsumReport, PhaseReport, Result, Workload, evaluate
from attncc.accel.spec import (
    PRESETS,
    Architecture,
    Buffer,
    OpCost,
    PEArray,
    SpecError,
    architecture_from_dict,
    load_architecture,
)

__all__ = [
    "PRESETS",
    "Architecture",
    "Buffer",
    "EinsumReport",
    "Fusion",
    "Mapping",
    "OpCost",
    "Overlap",
    "PEArray",
    "PhaseReport",
    "Result",
    "SpecError",
    "Workload",
    "architecture_from_dict",
    "evaluate",
    "load_architecture",
    "plan",
]
