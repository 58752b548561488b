"""The compiled CPU dropout (lightning_modules/kernels/dropout.c) against its torch fallback: the same values bit for
bit, the same training, whatever the thread count; and a build that cannot happen falls back with one warning."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_modules import cpu_kernels
from lightning_modules.patchtst import PatchTST, PatchTSTConfig, dropout

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(cpu_kernels.library() is None, reason="needs a C compiler (cc); CI has gcc")


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 65_537, 300_001])  # odd tails; above 65536 the kernel is parallel
@pytest.mark.parametrize("dropped", [1, 6554, 32768, 65535])
def test_the_kernel_and_the_torch_fallback_give_the_same_bits(n, dropped):
    x = torch.randn(n)
    keys = (0x9E3779B9, 12345)
    fast, slow = cpu_kernels.apply_mask(x, keys, dropped), cpu_kernels.apply_mask(x, keys, dropped, use_kernel=False)
    assert torch.equal(fast.view(torch.int32), slow.view(torch.int32))
    kept = cpu_kernels.kept(n, keys, dropped).bool()
    assert torch.equal(fast != 0, kept & (x != 0))


def test_the_mask_does_not_depend_on_the_thread_count():
    x, keys, threads = torch.randn(500_000), (1, 2), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_kernels.apply_mask(x, keys, 6554)
        torch.set_num_threads(2)
        two = cpu_kernels.apply_mask(x, keys, 6554)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_successive_masks_are_independent():
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


def test_training_with_the_kernel_equals_training_with_the_fallback(monkeypatch):
    """The speed option on and off: the same five AdamW steps, loss for loss (the masks are the same bits)."""
    fast = _losses(True, monkeypatch)
    assert fast == _losses(False, monkeypatch)
    assert len(set(fast)) == 5  # the steps trained


@pytest.mark.parametrize("setting", [{"CC": "/nonexistent/cc"}, {"FINSCALE_CPU_KERNELS": "0"}])
def test_without_a_compiler_the_fallback_runs_and_says_so(setting, tmp_path):
    """A fresh process with no compiler (or the kernel switched off) trains with the fallback's same masks."""
    code = (
        "import logging, torch; logging.basicConfig(level=logging.INFO)\n"
        "from lightning_modules import cpu_kernels\n"
        "from lightning_modules.patchtst import dropout\n"
        "torch.manual_seed(3); print((dropout(torch.ones(100_000), 0.2, True) != 0).sum().item())\n"
        "print(cpu_kernels.library() is None)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path), **setting}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, fallback = done.stdout.split()
    assert fallback == "True" and "torch fallback" in done.stderr and not list(tmp_path.rglob("*.so"))
    torch.manual_seed(3)
    assert int(count) == (dropout(torch.ones(100_000), 0.2, True) != 0).sum().item()  # the kernel's mask


def test_the_library_is_built_once_into_the_cache(tmp_path, monkeypatch, caplog):
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
