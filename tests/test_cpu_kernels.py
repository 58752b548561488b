"""The compiled CPU dropout (lightning_modules/kernels/dropout.c) against its torch fallback: the same values bit for
bit, the same training, whatever the thread count; and a build that cannot happen falls back with one warning.
The kernel is tested where a C compiler is found; the fallback everywhere, against masks recorded from the kernel."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_modules import cpu_kernels
from lightning_modules.fast_dropout import dropout
from lightning_modules.patchtst import PatchTST, PatchTSTConfig

ROOT = Path(__file__).resolve().parent.parent
COMPILER = os.environ.get("CC", "cc")


def _no_kernel() -> str | None:
    """Why the C kernel cannot be tested here, or None."""
    if os.environ.get("FINSCALE_CPU_KERNELS") == "0":
        return "switched off: FINSCALE_CPU_KERNELS=0"
    return None if shutil.which(COMPILER) else f"no C compiler: {COMPILER} is not on PATH"


NO_KERNEL = _no_kernel()
needs_compiler = pytest.mark.skipif(
    NO_KERNEL is not None, reason=f"the C kernel is tested where it can be built ({NO_KERNEL}); the fallback everywhere"
)
BOTH = [pytest.param(True, id="kernel", marks=needs_compiler), pytest.param(False, id="fallback")]


@pytest.fixture
def kernel():
    """The compiled library; with a compiler found, its absence is a failure, never a skip: a broken build would
    otherwise pass unnoticed on the fallback."""
    if cpu_kernels.library() is None:
        pytest.fail(f"lightning_modules/kernels/dropout.c did not build or load with {shutil.which(COMPILER)} (see "
                    "the log): fix the build")  # fmt: skip
    return cpu_kernels.library()


@pytest.fixture
def use_kernel(request, monkeypatch):
    """The test's parameter: True, the compiled kernel (which must load); False, the torch fallback (forced)."""
    if request.param:
        request.getfixturevalue("kernel")
    else:
        monkeypatch.setattr(cpu_kernels, "library", lambda: None)
    return request.param


@needs_compiler
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 65_537, 300_001])  # odd tails; above 65536 the kernel is parallel
@pytest.mark.parametrize("dropped", [1, 6554, 32768, 65535])
def test_the_kernel_and_the_torch_fallback_give_the_same_bits(kernel, n, dropped):
    x = torch.randn(n)
    keys = (0x9E3779B9, 12345)
    fast, slow = cpu_kernels.apply_mask(x, keys, dropped), cpu_kernels.apply_mask(x, keys, dropped, use_kernel=False)
    assert torch.equal(fast.view(torch.int32), slow.view(torch.int32))
    kept = cpu_kernels.kept(n, keys, dropped).bool()
    assert torch.equal(fast != 0, kept & (x != 0))


@pytest.mark.parametrize("use_kernel", BOTH, indirect=True)
def test_the_masks_are_the_ones_recorded_from_the_kernel(use_kernel):
    """Recorded with the kernel (65,537 values: an odd tail, and the parallel loop): without a compiler the
    fallback is still checked against the kernel's bits."""
    out = cpu_kernels.apply_mask(torch.arange(1, 65_538, dtype=torch.float32), (0x9E3779B9, 12345), 6554)
    assert (out != 0).sum().item() == 58_897
    assert hashlib.sha256(out.numpy().tobytes()).hexdigest()[:16] == "4ad4fd0f9c947385"


THREADS = """
import torch
from lightning_modules import cpu_kernels
x = torch.randn(500_000)
torch.set_num_threads(1)
one = cpu_kernels.apply_mask(x, (1, 2), 6554)
torch.set_num_threads(2)
print(torch.equal(one, cpu_kernels.apply_mask(x, (1, 2), 6554)), cpu_kernels.library() is not None)
"""


@pytest.mark.parametrize("use_kernel", BOTH, indirect=True)
def test_the_mask_does_not_depend_on_the_thread_count(use_kernel):
    """In a process of its own: a 2-thread OpenMP pool in a test worker would be inherited by its forked CLI tests."""
    env = {**os.environ, "FINSCALE_CPU_KERNELS": "1" if use_kernel else "0"}
    done = subprocess.run([sys.executable, "-c", THREADS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(use_kernel)]


OPENMP_DEFAULT = """
import ctypes, os, torch
from lightning_modules import cpu_kernels
torch.set_num_threads(1)
gomp = next(line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line)
ctypes.CDLL(gomp).omp_set_num_threads(4)  # an OpenMP runtime whose default is not torch's setting
before = len(os.listdir("/proc/self/task"))
cpu_kernels.apply_mask(torch.randn(1 << 22), (1, 2), 6554)
print(len(os.listdir("/proc/self/task")) - before)
"""


@needs_compiler
def test_the_kernel_runs_no_more_threads_than_torch(kernel):
    """Two hpo workers × 1 torch thread must not run 4 threads: the kernel takes torch.get_num_threads() as its
    thread count, whatever its OpenMP runtime's default (set to 4 here); without that it starts 3 more threads."""
    done = subprocess.run([sys.executable, "-c", OPENMP_DEFAULT], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]


@pytest.mark.parametrize("use_kernel", BOTH, indirect=True)
def test_successive_masks_are_independent(use_kernel):
    """Two calls draw new keys: the values both keep are (1 − p)² of all, as for independent masks."""
    torch.manual_seed(0)
    ones = torch.ones(1_000_000)
    first, second = (dropout(ones, 0.5, training=True) != 0 for _ in range(2))
    assert abs((first & second).double().mean().item() - 0.25) < 0.002
    assert abs(first.double().mean().item() - 0.5) < 0.002


def test_the_16_bit_values_are_uniform():
    """Each of 256 equal ranges of the 16 bits holds 1/256 of 2^20 values (chi-square, 255 degrees of freedom:
    below 330 with probability 0.999)."""
    keys, n = (7, 11), 2**20
    words = cpu_kernels._lowbias32(cpu_kernels._lowbias32(torch.arange(n // 2, dtype=torch.int32) ^ 7) ^ 11)
    halves = words.view(torch.int16).to(torch.int32) & 0xFFFF
    counts = torch.bincount(halves >> 8, minlength=256).double()
    assert ((counts - n / 256) ** 2 / (n / 256)).sum().item() < 330
    for cut in (1, 6554, 65535):  # and `kept` reads them as apply_mask does
        assert torch.equal(cpu_kernels.kept(n, keys, cut).bool(), halves >= cut)


def _losses(use_kernel: bool, monkeypatch) -> list[float]:
    monkeypatch.setattr(cpu_kernels, "library", cpu_kernels.library if use_kernel else lambda: None)
    torch.manual_seed(0)
    cfg = PatchTSTConfig(d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.3, attn_dropout=0.3, head_dropout=0.3)
    net = PatchTST(5, 40, cfg)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    x, y = torch.randn(32, 40, 5), (torch.rand(32) < 0.3).float()
    losses = []
    for _ in range(5):
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@needs_compiler
def test_training_with_the_kernel_equals_training_with_the_fallback(kernel, monkeypatch):
    """The speed option on and off: the same five AdamW steps, loss for loss (the masks are the same bits)."""
    fast = _losses(True, monkeypatch)
    assert fast == _losses(False, monkeypatch)
    assert len(set(fast)) == 5  # the steps trained


@pytest.mark.parametrize("setting", [{"CC": "/nonexistent/cc"}, {"FINSCALE_CPU_KERNELS": "0"}])
def test_without_a_compiler_the_fallback_runs_and_says_so(setting, tmp_path, monkeypatch):
    """A fresh process with no compiler (or the kernel switched off) trains with the fallback's same masks."""
    code = (
        "import logging, torch; logging.basicConfig(level=logging.INFO)\n"
        "from lightning_modules import cpu_kernels\n"
        "from lightning_modules.fast_dropout import dropout\n"
        "torch.manual_seed(3); print((dropout(torch.ones(100_000), 0.2, True) != 0).sum().item())\n"
        "print(cpu_kernels.library() is None)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path), **setting}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, fallback = done.stdout.split()
    assert fallback == "True" and "torch fallback" in done.stderr and not list(tmp_path.rglob("*.so"))
    monkeypatch.setattr(cpu_kernels, "library", lambda: None)  # this process's fallback: the same mask
    torch.manual_seed(3)
    assert int(count) == (dropout(torch.ones(100_000), 0.2, True) != 0).sum().item()


@needs_compiler
def test_the_library_is_built_once_into_the_cache(kernel, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cpu_kernels.library.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=cpu_kernels.__name__):
            assert cpu_kernels.library() is not None
            (built,) = (tmp_path / "finscale" / "kernels").glob("dropout-*.so")
            stamp = built.stat().st_mtime_ns
            cpu_kernels.library.cache_clear()
            assert cpu_kernels.library() is not None
        assert built.stat().st_mtime_ns == stamp
        assert [r.getMessage() for r in caplog.records].count(f"CPU dropout: built {built}") == 1
        assert list(built.parent.iterdir()) == [built]  # no scratch left behind
    finally:
        cpu_kernels.library.cache_clear()


@needs_compiler
def test_a_damaged_cached_library_is_built_again(kernel, tmp_path):
    """A cached file that does not load (another machine's, a damaged disk) is replaced by a new build. Fresh
    processes: a process that has loaded a path keeps that library for it."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    code = "from lightning_modules import cpu_kernels; print(cpu_kernels.library() is not None)"

    def loads() -> bool:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        return done.stdout.split() == ["True"]

    assert loads()
    (built,) = (tmp_path / "finscale" / "kernels").glob("dropout-*.so")
    damaged = built.with_suffix(".tmp")
    damaged.write_bytes(b"not a shared library")
    os.replace(damaged, built)  # never written in place: a loaded library is mapped from its file
    assert loads() and built.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("use_kernel", BOTH, indirect=True)
def test_backward_of_backward_is_refused_rather_than_wrong(use_kernel):
    """The mask's gradient carries no graph: asking for a second derivative through it must not give zeros."""
    x = torch.randn(1000, requires_grad=True)
    (grad,) = torch.autograd.grad(dropout(x, 0.5, training=True).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|trying to backward"):
        grad.sum().backward()


def test_what_the_kernel_does_not_cover_is_torch_s_dropout():
    """Float64, and p within 2^-17 of 1 (which would scale by 65536 / 0), take torch's own dropout."""
    x = torch.ones(10_000, dtype=torch.float64)
    assert dropout(x, 0.5, training=True).dtype == torch.float64
    assert dropout(torch.ones(1000), 1 - 2**-20, training=True).abs().sum().item() == 0.0
