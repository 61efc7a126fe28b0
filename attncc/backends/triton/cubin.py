"""What a Triton kernel costs on a GPU, read from its cubin on a machine without one.

Given an explicit `GPUTarget`, Triton lowers a kernel through its stages (ttir, ttgir, llir, ptx,
cubin) without touching a device, so register pressure, shared memory, spills and tensor-core use
can be checked on a CPU-only machine for every arch in `TARGETS`. The numbers come from the
`cuobjdump` that ships in the triton wheel (found through `triton.knobs`, which also honours
TRITON_CUOBJDUMP_PATH): `-res-usage` gives registers and shared, local and stack bytes, `-sass`
the instructions, counted by opcode. Every failure, from the frontend to `ptxas` to `cuobjdump`,
comes back as a `LoweringError` naming the kernel and the arch.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import triton
import triton.language as tl
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from attncc.errors import LoweringError

TARGETS: tuple[int, ...] = (80, 90)

# Tensor-core opcodes in SASS. Warp-level mma.sync becomes HMMA (fp16, bf16, tf32), IMMA (int8),
# DMMA (fp64) or BMMA (binary); Hopper's warpgroup wgmma becomes HGMMA, IGMMA, QGMMA (fp8) or
# BGMMA. A Hopper kernel that shows only the first kind missed wgmma and runs far below peak.
_WARP_MMA = frozenset({"HMMA", "IMMA", "DMMA", "BMMA"})
_WARPGROUP_MMA = frozenset({"HGMMA", "IGMMA", "QGMMA", "BGMMA"})
# ptxas spills registers to the stack frame in local memory: STL stores, LDL reloads. Triton
# kernels keep no local arrays, so these are spills (or the argument buffer of a device_print).
_SPILLS = frozenset({"STL", "LDL"})

# A SASS line: `/*0a40*/  @!P0 HMMA.16816.F32 R88, ...`; the opcode is the word before the first
# dot, after an optional predicate.
_SASS_OPCODE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@\S+\s+)?([A-Z][A-Z0-9_]*)", re.MULTILINE)
# A -res-usage entry: `Function flash:` then `REG:148 STACK:0 SHARED:1024 LOCAL:0 ...`.
_RES_FUNCTION = re.compile(r"^\s*Function (\S+):\s*\n(.*)$", re.MULTILINE)
_RES_FIELD = re.compile(r"(\w+(?:\[\d+\])?):(\d+)")

# How much of a compiler message goes into a LoweringError: enough for a CompilationError, which
# is up to 12 lines of the kernel's source, a caret and the reason.
_MESSAGE_LINES = 16


@dataclass(frozen=True)
class KernelResources:
    """One kernel compiled for one arch, as cuobjdump reports it: `registers` per thread,
    `shared_bytes` per block, `local_bytes` and `stack_bytes` per thread, instruction counts from
    the SASS. ptxas puts spilled registers in the stack frame, so a spilling kernel shows a
    nonzero `stack_bytes` and STL/LDL instructions while `local_bytes` (PTX .local arrays, which
    Triton does not emit) stays 0. `wgmma_instructions` is the Hopper warpgroup part of
    `mma_instructions`."""

    kernel: str
    arch: int
    num_warps: int
    num_stages: int
    registers: int
    shared_bytes: int
    local_bytes: int
    stack_bytes: int
    spill_instructions: int
    mma_instructions: int
    wgmma_instructions: int

    @property
    def spills(self) -> bool:
        return self.local_bytes > 0 or self.spill_instructions > 0


def compile_kernel(
    fn: JITFunction | InterpretedFunction,
    signature: Mapping[str, str],
    constexprs: Mapping[str, object],
    arch: int,
    *,
    num_warps: int = 4,
    num_stages: int = 2,
) -> Any:
    """Compile `fn` for sm_`arch` and return Triton's `CompiledKernel`.

    `signature` maps every argument to a Triton type (`*fp16`, `i32`, `constexpr`); `constexprs`
    gives the constexpr values. `fn` may be an `InterpretedFunction`: `@triton.jit` returns one
    when TRITON_INTERPRET=1 is set by the time the kernel is defined, and the kernel then serves
    both the interpreter and this compiler, rewrapped as a `JITFunction`. That works only while
    Triton's own library is compiled (see `library_is_interpreted`), and only for the kernel
    itself: `@triton.jit` helpers it calls must be `JITFunction`s.
    """
    jit_fn = _as_jit_function(fn, arch)
    where = f"kernel {jit_fn.__name__} on sm_{arch}"
    _check_arguments(jit_fn.arg_names, signature, constexprs, where)
    # Checked before triton.compile, whose cache would otherwise hide the problem for kernels
    # compiled in an earlier process.
    if library_is_interpreted():
        raise LoweringError(
            f"{where}: Triton was imported with TRITON_INTERPRET=1, which builds its own library "
            "(tl.zeros, tl.max, tl.sum, ...) for the interpreter, and its code generator cannot "
            "lower those; compile in a process started without TRITON_INTERPRET"
        )
    source = ASTSource(fn=jit_fn, signature=dict(signature), constexprs=dict(constexprs))
    # triton.compile reads options from a plain dict; the backend keeps the keys that are fields
    # of its CUDAOptions and drops the rest silently, so only known names are passed.
    options = {"num_warps": num_warps, "num_stages": num_stages}
    try:
        return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as error:  # any stage may fail: frontend, MLIR passes, LLVM, ptxas
        raise LoweringError(f"{where}: compilation failed:\n{_first_lines(error)}") from None


def library_is_interpreted() -> bool:
    """Whether `import triton` ran with TRITON_INTERPRET=1: its `@jit` library functions are then
    `InterpretedFunction`s, fixed for the life of the process, and `compile_kernel` refuses."""
    return any(isinstance(value, InterpretedFunction) for value in vars(tl.standard).values())


def resources(compiled: Any, arch: int, *, num_warps: int, num_stages: int) -> KernelResources:
    """Read the resources of `compiled` (from `compile_kernel` with the same arch and options)
    by running cuobjdump on its cubin."""
    kernel = compiled.name
    where = f"kernel {kernel} on sm_{arch}"
    meta = compiled.metadata
    if (meta.target.arch, meta.num_warps, meta.num_stages) != (arch, num_warps, num_stages):
        raise LoweringError(
            f"{where}: asked for num_warps={num_warps}, num_stages={num_stages}, but the kernel "
            f"was compiled for sm_{meta.target.arch} with num_warps={meta.num_warps}, "
            f"num_stages={meta.num_stages}"
        )
    with tempfile.TemporaryDirectory(prefix="attncc-cubin-") as folder:
        cubin = Path(folder) / f"{kernel}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = _parse_res_usage(_cuobjdump("-res-usage", cubin, where), kernel, where)
        opcodes = _opcode_counts(_cuobjdump("-sass", cubin, where))
    wgmma = sum(opcodes[op] for op in _WARPGROUP_MMA)
    return KernelResources(
        kernel=kernel,
        arch=arch,
        num_warps=num_warps,
        num_stages=num_stages,
        registers=usage["REG"],
        # Triton keeps its tiles in dynamic shared memory, sized at launch by metadata.shared, so
        # cuobjdump's SHARED is only the static part that ptxas adds (0 on sm_80, 1 KiB on sm_90
        # for the flash tile, with the dynamic buffer starting after it). A block needs the sum,
        # as Triton's loader assumes: driver.c caps the dynamic part at opt-in minus static.
        shared_bytes=usage["SHARED"] + meta.shared,
        local_bytes=usage["LOCAL"],
        stack_bytes=usage["STACK"],
        spill_instructions=sum(opcodes[op] for op in _SPILLS),
        mma_instructions=sum(opcodes[op] for op in _WARP_MMA) + wgmma,
        wgmma_instructions=wgmma,
    )


def resource_table(rows: Sequence[KernelResources]) -> str:
    """A plain text table, one line per kernel and arch, columns aligned."""
    cells = [_HEADINGS, *(_cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(_HEADINGS))]
    # Kernel and arch read left to right; the counts line up on their last digit.
    lines = [
        "  ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]
    return "\n".join(lines) + "\n"


_HEADINGS = (
    "kernel", "arch", "warps", "stages", "regs", "shared", "local", "stack",
    "spill ops", "mma ops", "wgmma ops",
)  # fmt: skip


def _cells(r: KernelResources) -> tuple[str, ...]:
    counts = (
        r.num_warps, r.num_stages, r.registers, r.shared_bytes, r.local_bytes, r.stack_bytes,
        r.spill_instructions, r.mma_instructions, r.wgmma_instructions,
    )  # fmt: skip
    return (r.kernel, f"sm_{r.arch}", *map(str, counts))


def _as_jit_function(fn: object, arch: int) -> JITFunction:
    if isinstance(fn, JITFunction):
        return fn
    if isinstance(fn, InterpretedFunction):
        return JITFunction(fn.fn)
    name = getattr(fn, "__name__", repr(fn))
    raise LoweringError(
        f"kernel {name} on sm_{arch}: not a Triton kernel; did you forget to add @triton.jit?"
    )


def _check_arguments(
    arg_names: Sequence[str],
    signature: Mapping[str, str],
    constexprs: Mapping[str, object],
    where: str,
) -> None:
    # Triton answers these mistakes with errors that do not name the argument ("'B' is not in
    # list", "'NoneType' object has no attribute '_unflatten_ir'").
    problems = [
        f"{name!r} has no type in the signature" for name in arg_names if name not in signature
    ]
    problems += [
        f"{kind} names {name!r}, which is not an argument"
        for kind, names in (("the signature", signature), ("constexprs", constexprs))
        for name in names
        if name not in arg_names
    ]
    if problems:
        raise LoweringError(f"{where}: " + "; ".join(problems))


def _first_lines(error: Exception) -> str:
    lines = f"{type(error).__name__}: {error}".strip().splitlines()
    if len(lines) > _MESSAGE_LINES:
        lines = [*lines[:_MESSAGE_LINES], f"... ({len(lines) - _MESSAGE_LINES} more lines)"]
    return "\n".join(f"  {line}" for line in lines)


def _cuobjdump(flag: str, cubin: Path, where: str) -> str:
    try:
        tool = knobs.nvidia.cuobjdump.path
    except RuntimeError:
        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        raise LoweringError(
            f"{where}: cannot read resources: cuobjdump not found at {bundled} (nor at "
            "TRITON_CUOBJDUMP_PATH); reinstall the triton wheel, which ships it"
        ) from None
    result = subprocess.run([tool, flag, str(cubin)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = "\n".join(result.stderr.strip().splitlines()[:_MESSAGE_LINES])
        raise LoweringError(f"{where}: cuobjdump {flag} failed:\n{message}")
    return result.stdout


def _parse_res_usage(text: str, kernel: str, where: str) -> dict[str, int]:
    for match in _RES_FUNCTION.finditer(text):
        if match.group(1) == kernel:
            fields = {name: int(value) for name, value in _RES_FIELD.findall(match.group(2))}
            missing = {"REG", "SHARED", "LOCAL", "STACK"} - fields.keys()
            if missing:
                raise LoweringError(f"{where}: cuobjdump -res-usage lacks {sorted(missing)}")
            return fields
    raise LoweringError(f"{where}: cuobjdump -res-usage lists no function {kernel}:\n{text}")


def _opcode_counts(sass: str) -> Counter[str]:
    # The whole cubin counts: it holds one kernel and the device functions it calls.
    return Counter(_SASS_OPCODE.findall(sass))
