"""The pure-torch network: shapes, logits, channel modes, validation, exact size and FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.fast_dropout import attention, dropout
from lightning_modules.patchtst import PatchTST, PatchTSTConfig
from sizing.accounting import forward_flops_per_sample, parameter_count

SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64, "head": "flatten", "linear_skip": False}


def small(**changes) -> PatchTSTConfig:
    return PatchTSTConfig(**{**SMALL, **changes})


@pytest.mark.parametrize("channel_mode", ["mixing", "independent"])
@pytest.mark.parametrize("revin", [False, True])
def test_windows_in_one_logit_out(channel_mode, revin):
    net = PatchTST(25, 80, small(channel_mode=channel_mode, revin=revin))
    assert net.n_patches == 9  # (80 − 16) // 8 + 1
    logits = net(torch.randn(7, 80, 25) * 5)
    assert logits.shape == (7,) and logits.dtype == torch.float32  # logits, not probabilities: the next test


def test_outputs_are_logits_not_probabilities():
    torch.manual_seed(0)
    net = PatchTST(3, 32, small(patch_length=8, patch_stride=4))
    with torch.no_grad():
        net.head.bias.fill_(-3.0)
        assert (net(torch.randn(16, 32, 3)) < 0).all()  # a sigmoid could never be negative


def test_channel_independent_mode_is_blind_to_channel_order_and_mixing_is_not():
    torch.manual_seed(0)
    x = torch.randn(4, 80, 6)
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    for mode, invariant in (("independent", True), ("mixing", False)):
        net = PatchTST(6, 80, small(channel_mode=mode, dropout=0, attn_dropout=0, head_dropout=0))
        net.eval()
        same = torch.allclose(net(x), net(x[:, :, perm]), atol=1e-5)
        assert same is invariant, mode


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    net = PatchTST(5, 40, small(patch_length=8, patch_stride=8, dropout=0.5, attn_dropout=0.5))
    x = torch.randn(8, 40, 5)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_the_fast_cpu_dropout_is_inverted_dropout_with_probability_p(p):
    """One million values: the kept share is 1 − p within 4 standard errors, kept values are scaled by 1 / (1 − p),
    the gradient flows through the kept ones only, and a seed gives the same mask."""
    x = torch.rand(1000, 1000) + 1.0  # never 0: a zero marks a dropped value
    x.requires_grad_(True)
    torch.manual_seed(7)
    y = dropout(x, p, training=True)
    kept = y != 0
    share = kept.double().mean().item()
    assert abs(share - (1 - p)) < 4 * ((p * (1 - p) / x.numel()) ** 0.5)
    assert torch.allclose(y[kept], x.detach()[kept] / (1 - p))
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p))  # p as realised: to 1/65536
    torch.manual_seed(7)
    assert torch.equal(dropout(x.detach(), p, training=True) != 0, kept)
    assert dropout(x, p, training=False) is x and dropout(x, 0.0, training=True) is x


def test_the_fast_cpu_dropout_draws_independent_masks_per_position():
    """Neighbouring values (the four 16-bit parts of one random word) are dropped independently."""
    torch.manual_seed(0)
    kept = (dropout(torch.ones(400_000), 0.5, training=True) != 0).view(-1, 4).float()
    together = (kept[:, :-1] * kept[:, 1:]).mean().item()  # both neighbours kept: 1/4 when independent
    assert abs(together - 0.25) < 0.005 and abs(kept.mean().item() - 0.5) < 0.005


def test_attention_with_dropout_is_the_same_maths_as_torch_s():
    """On CPU with dropout the weights are computed here (so that `dropout` draws their mask): with a dropout too
    small to drop anything it equals torch's fused attention, at the default and at a given scale; with p = 0.3 it
    is softmax(q·kᵀ·scale) with that mask, then · v."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 2, 9, 16) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert torch.allclose(attention(q, k, v, 1e-9), sdpa(q, k, v), atol=1e-6)  # 1e-9 of 65536 values: none dropped
    assert torch.allclose(attention(q, k, v, 1e-9, scale=0.5), sdpa(q, k, v, scale=0.5), atol=1e-6)
    torch.manual_seed(1)
    got = attention(q, k, v, 0.3)
    torch.manual_seed(1)  # the same keys: the same mask
    weights = dropout(torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1), 0.3, training=True)
    assert torch.allclose(got, weights @ v, atol=1e-6)
    assert not torch.allclose(got, sdpa(q, k, v), atol=1e-2)  # and something was dropped


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"d_model": 30, "n_heads": 4}, "d_model 30 is not divisible by n_heads 4"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"channel_mode": "both"}, "channel_mode must be one of"),
        ({"n_layers": 0}, "n_layers must be ≥ 1"),
    ],
)
def test_config_validates_itself(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(**kwargs)


def test_patch_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="patch_length 16 > context_length 12"):
        PatchTST(5, 12, small())


@pytest.mark.parametrize("channel_mode", ["mixing", "independent"])
def test_closed_form_parameter_count_is_exact(channel_mode):
    cfg = small(channel_mode=channel_mode, revin=True)
    assert parameter_count(25, 80, cfg) == sum(p.numel() for p in PatchTST(25, 80, cfg).parameters())


@pytest.mark.parametrize("channel_mode", ["mixing", "independent"])
def test_analytic_flops_match_torch_flop_counter(channel_mode):
    cfg = small(channel_mode=channel_mode)
    net = PatchTST(25, 80, cfg).eval()
    # the math backend runs attention as matmuls the counter sees (it does not count CPU flash attention)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 80, 25))
    assert forward_flops_per_sample(25, 80, cfg) == counter.get_total_flops()


def _valid_geometries(context_length: int):
    for patch in range(1, context_length + 1):
        for stride in range(1, patch + 1):
            yield patch, stride


@pytest.mark.parametrize("head", ["flatten", "last", "mean"])
@pytest.mark.parametrize("channel_mode", ["mixing", "independent"])
def test_the_last_input_day_reaches_the_network_for_every_valid_geometry(head, channel_mode):
    """Patches end on the last day: only the first (L − P) mod S days may be dropped, never the last."""
    torch.manual_seed(0)
    length = 13
    for patch, stride in _valid_geometries(length):
        geometry = {"patch_length": patch, "patch_stride": stride, "head": head, "channel_mode": channel_mode}
        cfg = PatchTSTConfig(d_model=8, n_heads=2, n_layers=1, d_ff=16, dropout=0, attn_dropout=0, head_dropout=0,
                             **geometry)  # fmt: skip
        net = PatchTST(2, length, cfg).eval()
        x = torch.randn(3, length, 2, requires_grad=True)
        net(x).sum().backward()
        used = x.grad.abs().sum(dim=(0, 2)) > 0  # (L,): which days moved the logit
        dropped = (length - patch) % stride
        assert used[-1], f"P={patch} S={stride}: the last day does not reach the network"
        assert used.tolist() == [False] * dropped + [True] * (length - dropped), f"P={patch} S={stride}"


def test_a_stride_longer_than_the_patch_is_refused():
    with pytest.raises(ValueError, match="patch_stride 9 > patch_length 8 would skip days"):
        small(patch_length=8, patch_stride=9)


def test_heads_read_the_tokens_as_configured():
    assert small(head="flatten").head_inputs(80) == 9 * 32
    assert small(head="last").head_inputs(80) == small(head="mean").head_inputs(80)
    with pytest.raises(ValueError, match="head must be one of"):
        small(head="cls")


def test_started_as_linear_the_network_is_that_linear_model_of_the_last_day():
    torch.manual_seed(0)
    net = PatchTST(4, 32, small(patch_length=8, patch_stride=4, linear_skip=True, revin=True))
    weight, bias = torch.tensor([0.5, -1.0, 2.0, 0.0]), 0.3
    net.start_as_linear(weight, bias)
    x = torch.randn(6, 32, 4)
    assert torch.allclose(net(x), x[:, -1] @ weight + bias, atol=1e-6)
    with pytest.raises(ValueError, match="needs the linear path"):
        PatchTST(4, 32, small(patch_length=8)).start_as_linear(weight, bias)


@pytest.mark.parametrize("head", ["flatten", "last", "mean"])
@pytest.mark.parametrize("linear_skip", [False, True])
def test_counts_and_flops_follow_the_head_and_the_linear_path(head, linear_skip):
    cfg = small(head=head, linear_skip=linear_skip, patch_length=10, patch_stride=3)
    net = PatchTST(25, 80, cfg).eval()
    assert parameter_count(25, 80, cfg) == sum(p.numel() for p in net.parameters())
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 80, 25))
    assert forward_flops_per_sample(25, 80, cfg) == counter.get_total_flops()
