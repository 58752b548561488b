"""Dropout on CPU as one fused C loop (kernels/dropout.c), compiled at first use, with a torch fallback that
computes the same values bit for bit.

Why: torch's CPU dropout draws one Bernoulli value per element, and then a mask, a multiply and a scale are
separate passes over memory; on the small tensors of a 2M model that was 30% of a training step, and the deep
narrow shapes a search favours have many of them (bench/RESULTS.md, issue 18). The kernel draws counter-based
random bits (a hash of the position and two keys), so backward regenerates the mask from the keys instead of
keeping it, and the mask does not depend on the number of threads. The keys come from torch's generator:
seeding, checkpointed RNG state and per-rank seeds apply as for any torch op. Each call runs on at most
torch.get_num_threads() threads (passed to the loop: the library's OpenMP runtime may not be torch's).

The library is built with the C compiler (`$CC`, else `cc`) into ~/.cache/finscale (`$XDG_CACHE_HOME`), once per
source, compiler and machine. Without a compiler, or with FINSCALE_CPU_KERNELS=0, the torch fallback runs: the
same masks, slower. A build, and a fallback with its reason, are logged once per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "dropout.c"
FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared")
MASK_BITS = 16  # 16 random bits per value: p is realised to the nearest 1/65536 (0.1 → 0.100006)
MAX_NUMEL = 2**31  # larger tensors take torch's dropout: the fallback counts words in int32


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finscale" / "kernels"


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (no compiler, a failed build, FINSCALE_CPU_KERNELS=0): use the fallback."""
    if os.environ.get("FINSCALE_CPU_KERNELS", "1") == "0":
        log.info("CPU dropout: torch fallback (FINSCALE_CPU_KERNELS=0)")
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.warning("CPU dropout: no C compiler (cc or $CC) found; the slower torch fallback draws the same masks")
        return None
    try:
        path = _build(compiler)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:  # a cached library that does not load (another machine's, damaged): build it again
            path.unlink(missing_ok=True)
            lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:  # RuntimeError: no home folder
        log.warning(f"CPU dropout: building {SOURCE.name} failed ({_first_error(err)}); the slower torch fallback "
                    "runs")  # fmt: skip
        return None
    lib.finscale_dropout.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32,
                                     ctypes.c_uint32, ctypes.c_uint32, ctypes.c_float, ctypes.c_int32]  # fmt: skip
    lib.finscale_dropout.restype = None
    return lib


def _first_error(err: Exception) -> str:
    """The compiler's first error line (its first line is often only "In function …"), else the exception."""
    lines = (getattr(err, "stderr", None) or "").strip().splitlines()
    return next((line for line in lines if "error" in line), lines[-1] if lines else str(err))


def _build(compiler: str) -> Path:
    """Compile once per (source, compiler, flags, machine) into the cache; concurrent builders each rename a whole
    file into place, so a killed build never leaves a partial library."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    parts = [SOURCE.read_text(), compiler, version, platform.machine(), *FLAGS]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    target = cache_dir() / f"dropout-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
        os.replace(built, target)
    log.info(f"CPU dropout: built {target}")
    return target


def keys() -> tuple[int, int]:
    """Two 32-bit keys for one mask, from torch's default generator."""
    k0, k1 = torch.randint(0, 2**32, (2,), dtype=torch.int64).tolist()
    return k0, k1


def apply_mask(x: torch.Tensor, keys: tuple[int, int], dropped: int, use_kernel: bool = True) -> torch.Tensor:
    """x · keep · 65536 / (65536 − dropped), keep drawn from `keys` (see kernels/dropout.c); a new tensor. x has
    fewer than MAX_NUMEL values (`fast_dropout.dropout` sends larger ones to torch's dropout)."""
    x = x.contiguous()
    scale = 2**MASK_BITS / (2**MASK_BITS - dropped)
    lib = library() if use_kernel else None
    if lib is None:
        return x.mul(kept(x.numel(), keys, dropped).view(x.shape)).mul_(scale)
    out = torch.empty_like(x)
    lib.finscale_dropout(x.data_ptr(), out.data_ptr(), x.numel(), *keys, dropped, scale, torch.get_num_threads())
    return out


def kept(n: int, keys: tuple[int, int], dropped: int) -> torch.Tensor:
    """The kernel's keep mask in torch operations: (n,) uint8 of 0/1."""
    k0, k1 = (_int32(k) for k in keys)
    words = _lowbias32(_lowbias32(torch.arange((n + 1) // 2, dtype=torch.int32) ^ k0) ^ k1)  # (⌈n/2⌉,)
    halves = words.view(torch.int16)[:n].to(torch.int32) & 0xFFFF  # (n,): low 16 bits, then high, per word
    return (halves >= dropped).to(torch.uint8)


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 on int32 (wrapping multiplies; `>>` made logical by masking the sign's copies)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _int32(0x7FEB352D)
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _int32(0x846CA68B)
    return x ^ ((x >> 16) & 0xFFFF)


def _int32(value: int) -> int:
    """An unsigned 32-bit value as the int32 with the same bits."""
    return value - 2**32 if value >= 2**31 else value
