"""Where the Triton launchers' kernels come from: JIT (backend ``"triton"``) or the cubins of a
loaded artifact (backend ``"aot"``, DESIGN section 5: no compiler on the device).

A launcher describes a launch in two parts and leaves the choice of code to :func:`configure`:

* ``semantic`` constexprs: what the call computes (dtypes of the data, PAGE_SIZE, FP8 flags,
  the fused epilogue). An AOT kernel must match every one of them.
* ``tiles``: how it is computed (BLOCK_M, num_warps, split-KV, ...). JIT uses the launcher's
  picks; AOT takes the artifact's frozen ones, and the launcher sizes its grid from
  ``launch.constexprs`` either way.

``launch[grid](*args)`` then takes the kernel's runtime arguments in declaration order. On the
AOT path they are named from the kernel's signature and handed to
:meth:`lpm_rt.artifact.CubinKernel.launch`, which refuses any argument outside the compiled
contract (pointer dtypes, alignment, specialized strides, divisibility). Among the artifact's
specializations with the right semantics, the first whose contract accepts the arguments runs;
if none does, :class:`ArtifactError` says why for each -- there is no JIT fallback. Where the
artifact holds one kernel at several tile sizes, the launcher names the tiles its choice
depends on the call's shape for (``prefer``, e.g. a key tile sized to the key count): the
specializations with the launcher's values are taken first.

``FIX_ROUND`` and ``IEEE`` are numerics switches for the interpreter (numpy has no bf16/fp8
rounding): they are not part of the match, and compiled kernels carry their GPU values.
"""

from __future__ import annotations

import contextlib
import inspect

from ..errors import ArtifactError

__all__ = ["install", "installed", "uninstall", "configure", "kernel_key", "override_tiles", "overridden"]

NUMERICS = ("FIX_ROUND", "IEEE")
_CUBINS: dict[str, list] = {}          # "module.function" -> [CubinKernel], artifact order


def kernel_key(fn) -> str:
    """"csrc_triton.<module>.<function>" of a JIT (or interpreted) kernel: the manifest's ``kernel``."""
    return f"{fn.fn.__module__}.{fn.fn.__name__}"


_HANDLES: dict = {}                    # (kernel, semantics) -> _Aot: the hot path looks up, once matched
_OVERRIDES: dict = {}                  # kernel key -> (tiles, num_warps, num_stages): override_tiles


@contextlib.contextmanager
def override_tiles(fn, tiles: dict, num_warps: int, num_stages: int | None = None):
    """Within the block, JIT launches of ``fn`` use ``tiles`` (merged over the launcher's picks),
    ``num_warps`` and ``num_stages`` -- what ``scripts/tune_kernels.py`` sweeps to fill the frozen
    tables. The AOT backend ignores it (an artifact's tiles are compiled in)."""
    key = kernel_key(fn)
    prev = _OVERRIDES.get(key)
    _OVERRIDES[key] = (dict(tiles), num_warps, num_stages)
    try:
        yield
    finally:
        if prev is None:
            _OVERRIDES.pop(key, None)
        else:
            _OVERRIDES[key] = prev


def overridden(fn) -> bool:
    return kernel_key(fn) in _OVERRIDES


def _signature(fn) -> tuple[list, list]:
    """(declared constexpr names, runtime parameter names in order) of a kernel."""
    params = inspect.signature(fn.fn).parameters
    declared = [n for n, p in params.items() if "constexpr" in str(p.annotation)]
    return declared, [n for n in params if n not in declared]


def _constexpr_defaults(fn) -> dict:
    """{name: default} of a kernel's constexprs that have one: what a cubin compiled before such a
    constexpr existed was compiled with, so an artifact's record without it matches its default."""
    return {n: p.default for n, p in inspect.signature(fn.fn).parameters.items()
            if "constexpr" in str(p.annotation) and p.default is not inspect.Parameter.empty}


def install(kernels: dict) -> None:
    """Make the AOT backend launch ``kernels`` ({name: CubinKernel}, from ``load_kernels``)."""
    uninstall()
    for k in kernels.values():
        _CUBINS.setdefault(k.record["kernel"], []).append(k)


def uninstall() -> None:
    _CUBINS.clear()
    _HANDLES.clear()


def installed() -> bool:
    return bool(_CUBINS)


class _Jit:
    def __init__(self, fn, constexprs: dict, num_warps: int, num_stages: int | None):
        self.fn, self.constexprs = fn, constexprs
        self.opts = dict(num_warps=num_warps) | ({} if num_stages is None else dict(num_stages=num_stages))

    def __getitem__(self, grid):
        return lambda *args: self.fn[grid](*args, **self.constexprs, **self.opts)


class _Aot:
    def __init__(self, fn, candidates: list, declared: list, names: list):
        self.fn, self.candidates, self.names = fn, candidates, names
        first = {**_constexpr_defaults(fn), **candidates[0].record["constexprs"]}
        self.constexprs = {n: first[n] for n in declared if n in first}

    def __getitem__(self, grid):
        def run(*args):
            if len(args) != len(self.names):
                raise ArtifactError(f"{kernel_key(self.fn)}: {len(args)} arguments for {len(self.names)} parameters")
            named = dict(zip(self.names, args))
            why = []
            for k in self.candidates:
                try:
                    packed = k.pack_args(named)     # the compiled contract, checked before the launch
                except ArtifactError as e:
                    why.append(str(e))
                    continue
                return k.launch(grid, named, packed=packed)
            raise ArtifactError(f"no kernel of the artifact accepts this call of {kernel_key(self.fn)}: "
                                + "; ".join(why))
        return run


def configure(fn, semantic: dict, tiles: dict, num_warps: int, num_stages: int | None = None,
              prefer: tuple = ()):
    """-> a launch handle: ``handle.constexprs`` (semantic + tiles in use) and ``handle[grid](*args)``.
    ``prefer``: names in ``tiles`` whose values the AOT backend matches where the artifact has
    them (otherwise its first tile set); the launcher sizes its grid from ``handle.constexprs``."""
    from . import get_backend

    if get_backend() != "aot":
        ov = _OVERRIDES.get(kernel_key(fn)) if _OVERRIDES else None
        if ov is not None:
            tiles, num_warps, num_stages = {**tiles, **ov[0]}, ov[1], ov[2]
        return _Jit(fn, {**semantic, **tiles}, num_warps, num_stages)
    key = kernel_key(fn)
    if not _CUBINS:
        raise ArtifactError("ops backend 'aot' without an artifact's kernels: load a GPU artifact "
                            "(lpm_rt.load(DIR)) or select the 'triton' backend")
    want = {n: v for n, v in semantic.items() if n not in NUMERICS}
    memo = (key, tuple(sorted(want.items())), tuple((n, tiles[n]) for n in prefer))
    if memo in _HANDLES:
        return _HANDLES[memo]
    declared, names = _signature(fn)
    have = _CUBINS.get(key, [])
    defaults = _constexpr_defaults(fn)
    compiled_with = lambda k, n: k.record["constexprs"].get(n, defaults.get(n))   # noqa: E731
    match = [k for k in have if all(compiled_with(k, n) == v for n, v in want.items())]
    if not match:
        compiled = [{n: compiled_with(k, n) for n in want} for k in have]
        raise ArtifactError(f"the artifact has no {key} compiled for {want} (it has {compiled or 'none'}); "
                            "recompile it for this configuration (lpm-rt compile)")
    preferred = [k for k in match if all(k.record["constexprs"].get(n) == tiles[n] for n in prefer)]
    match = preferred or match
    tiles_of = lambda k: tuple(k.record["constexprs"].get(n) for n in declared)   # noqa: E731
    match = [k for k in match if tiles_of(k) == tiles_of(match[0])]            # one grid for all
    handle = _HANDLES[memo] = _Aot(fn, match, declared, names)
    return handle
