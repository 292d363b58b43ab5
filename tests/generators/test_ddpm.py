"""The DDPM family: network shape, data scaling, schedule, samplers, training step, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmri.data.labels import LABEL_VALUES
from synthmri.generators import FAMILIES, get_family
from synthmri.config import load_config
from synthmri.generators.ddpm import Schedule, build_network, ddim_timesteps, to_uint8, to_unit_range

from . import SIZE, one_thread, phantom_slices, tiny_config


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def ddpm():
    """(family, model_args, network) of the tiny DDPM, seeded."""
    family = get_family("ddpm")
    args = family.model_args(tiny_config(), SIZE)
    torch.manual_seed(0)
    return family, args, family.build(args)


def test_registry_is_explicit_and_rejects_unknown_names():
    assert "ddpm" in FAMILIES and get_family("ddpm").name == "ddpm"
    with pytest.raises(ValueError, match=r"unknown generator model 'stylegan9'.*known: ddpm"):
        get_family("stylegan9")


def test_network_predicts_noise_of_the_input_shape(ddpm):
    family, args, network = ddpm
    assert args["in_channels"] == args["out_channels"] == 5
    x = torch.randn(3, 5, SIZE, SIZE)
    out = network(x, torch.tensor([0, 10, 49]))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("override, message", [
    ({"generator.ddpm.num_head_channels": 6}, "num_head_channels"),
    ({"data.size": 31}, "not divisible by 2"),
])
def test_inconsistent_settings_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):  # from load_config or, size-dependent, from model_args
        cfg = tiny_config(**override)
        get_family("ddpm").model_args(cfg, cfg.data.size)


def test_scaling_round_trips_uint8_and_snaps_the_annotation():
    images = phantom_slices(4)
    x = to_unit_range(torch.from_numpy(images))
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), images)
    noisy = to_uint8(x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    assert set(np.unique(noisy[:, 4]).tolist()) <= set(LABEL_VALUES)


@pytest.mark.parametrize("total, steps", [(1000, 25), (1000, 15), (50, 7), (50, 50)])
def test_ddim_timesteps_are_strided_and_end_on_the_clean_image(total, steps):
    timesteps = ddim_timesteps(total, steps)
    stride = total // steps
    assert len(timesteps) == steps and timesteps[0] > total - 1 - stride and timesteps[-1] < stride
    assert set(torch.diff(timesteps).tolist()) <= {-stride}
    with pytest.raises(ValueError, match="DDIM steps must be in 1..50"):
        ddim_timesteps(50, 51)


class _Oracle(torch.nn.Module):
    """The exact noise predictor for a data set of one image: eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)."""

    def __init__(self, target: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.target, self.alphas_cumprod = target, alphas_cumprod

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.target) / (1 - a).sqrt()


@pytest.mark.parametrize("options", [{"sampler": "ddim", "steps": 7}, {"sampler": "ddim", "steps": 1},
                                     {"sampler": "ancestral"}, {"sampler": "ddpm"}])
def test_sampler_recovers_the_image_an_exact_denoiser_knows(ddpm, options):
    """With a perfect noise predictor both samplers must land exactly on the data: this pins the
    schedule, the timestep alignment and the final step, independent of any training."""
    family, args, _ = ddpm
    target = phantom_slices(1)
    oracle = _Oracle(to_unit_range(torch.from_numpy(target)), torch.from_numpy(Schedule(args).alphas_cumprod).float())
    images = family.sample(oracle, args, 2, torch.Generator().manual_seed(0), options)
    assert np.array_equal(images, np.repeat(target, 2, axis=0))


@pytest.mark.parametrize("options", [{"sampler": "ddim", "steps": 4}, {"sampler": "ancestral"}])
def test_sampler_is_uint8_labelled_and_seeded(ddpm, options):
    family, args, network = ddpm

    def draw(seed: int) -> np.ndarray:
        return family.sample(network, args, 3, torch.Generator().manual_seed(seed), options)

    first, again, other = draw(7), draw(7), draw(8)
    assert first.dtype == np.uint8 and first.shape == (3, 5, SIZE, SIZE)
    assert set(np.unique(first[:, 4]).tolist()) <= set(LABEL_VALUES)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_sampler_rejects_unknown_options(ddpm):
    family, args, network = ddpm
    with pytest.raises(ValueError, match="unknown DDPM sampling option"):
        family.sample(network, args, 1, torch.Generator(), {"truncation": 0.7})
    with pytest.raises(ValueError, match="sampler must be one of"):
        family.sample(network, args, 1, torch.Generator(), {"sampler": "euler"})


def test_train_step_gives_a_finite_loss_and_moves_weights(ddpm):
    family, args, _ = ddpm
    torch.manual_seed(0)
    network = family.build(args)
    before = [p.detach().clone() for p in network.parameters()]
    trainer = family.trainer(network, args, tiny_config())
    losses = trainer.step(torch.from_numpy(phantom_slices(4)), torch.Generator().manual_seed(0))
    assert np.isfinite(losses["loss"]) and losses["loss"] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, network.parameters()))
    assert "optimizer" in trainer.state_dict()


# --- the paper's diffusion (guided-diffusion as the authors ran it) -------------------------------

PAPER_BETAS = np.linspace(2.5e-5, 5e-3, 4000)  # "linear" rescaled by 1000 / 4000


def test_paper_profile_is_the_authors_run():
    section = load_config("paper").generator.ddpm
    assert (section.network, section.model_channels, tuple(section.channel_mult), section.num_res_blocks) == \
        ("guided", 64, (1, 1, 2, 2, 4, 4), 3)
    assert (tuple(section.attention_resolutions), section.num_heads, section.use_scale_shift_norm, section.dropout) == \
        ((16, 8), 4, True, 0.0)
    assert (section.timesteps, section.schedule, section.sampler) == (4000, "rescaled_linear", "ancestral")
    assert (section.batch_size, section.iterations, section.lr, section.ema_decay) == (12, 650_000, 1e-4, 0.9999)
    assert section.iterations * section.batch_size == 7_800_000  # Table 9: 7800 kimg
    assert section.batch_size % section.batch_gpu == 0


def test_paper_betas_are_guided_diffusions_rescaled_linear():
    args = get_family("ddpm").model_args(load_config("paper"), 256)
    schedule = Schedule(args)
    np.testing.assert_array_equal(schedule.betas, PAPER_BETAS)
    assert schedule.alphas_cumprod[-1] == pytest.approx(4.25e-5, rel=0.01)  # PAPER-FIDELITY.md
    # The plain linear schedule is still there (and is what the same numbers mean with schedule: linear).
    linear = Schedule({**args, "schedule": "linear"})
    np.testing.assert_array_equal(linear.betas, np.linspace(1e-4, 0.02, 4000))


def test_rescaled_schedule_must_keep_betas_below_one():
    with pytest.raises(ValueError, match="rescaled_linear at 10 timesteps"):
        get_family("ddpm").model_args(tiny_config(**{"generator.ddpm.timesteps": 10}), SIZE)
    with pytest.raises(ValueError, match="betas must lie in"):
        Schedule({"timesteps": 10, "schedule": "rescaled_linear", "beta_start": 1e-4, "beta_end": 0.02})


def _numpy_ancestral_step(x, eps, noise, t, betas):
    """guided-diffusion's p_sample with clip_denoised and the fixed-large variance, from scratch."""
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = 1.0 if t == 0 else abar[t - 1]
    x0 = np.clip(np.sqrt(1 / abar[t]) * x - np.sqrt(1 / abar[t] - 1) * eps, -1, 1)
    mean = (betas[t] * np.sqrt(abar_prev) / (1 - abar[t])) * x0 + ((1 - abar_prev) * np.sqrt(alphas[t]) / (1 - abar[t])) * x
    return mean if t == 0 else mean + np.sqrt(betas[t]) * noise  # fixed-large: sigma_t^2 = beta_t


@pytest.mark.parametrize("t", [0, 1, 1999, 3999])
def test_ancestral_step_is_the_posterior_mean_plus_fixed_large_noise(t):
    schedule = Schedule(get_family("ddpm").model_args(load_config("paper"), 256))
    rng = np.random.default_rng(t)
    x = rng.normal(0, 1.5, (2, 5, 8, 8))  # wide enough that some x0 estimates get clipped
    eps, noise = rng.normal(size=x.shape), rng.normal(size=x.shape)
    step = torch.full((2,), t, dtype=torch.long)
    got = schedule.ancestral_step(torch.tensor(x, dtype=torch.float32), step, torch.tensor(eps, dtype=torch.float32),
                                  torch.tensor(noise, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), _numpy_ancestral_step(x, eps, noise, t, PAPER_BETAS), rtol=1e-5, atol=2e-5)
    # At t = 0 the noise is not used at all; the variance entry there is the posterior variance at t = 1.
    if t == 0:
        assert torch.equal(got, schedule.ancestral_step(torch.tensor(x, dtype=torch.float32), step,
                                                        torch.tensor(eps, dtype=torch.float32), None))
    alphas_cumprod = np.cumprod(1 - PAPER_BETAS)
    assert schedule.variance_large[0] == pytest.approx(PAPER_BETAS[1] * (1 - alphas_cumprod[0]) / (1 - alphas_cumprod[1]))
    np.testing.assert_array_equal(schedule.variance_large[1:], PAPER_BETAS[1:])


class _Affine(torch.nn.Module):
    """A stand-in denoiser: eps = 0.3 x + 0.01 t."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.3 * x + 0.01 * t.view(-1, 1, 1, 1).float()


def test_ancestral_chain_draws_start_noise_then_one_noise_per_step(ddpm):
    """The whole chain against numpy: x_T, then a fresh N(0, I) draw for every t > 0, none at t = 0."""
    family, args, _ = ddpm
    args = {**args, "timesteps": 6, "schedule": "linear", "beta_start": 0.05, "beta_end": 0.5}
    images = family.sample(_Affine(), args, 2, torch.Generator().manual_seed(3), {"sampler": "ancestral"})
    rng = torch.Generator().manual_seed(3)
    shape = (2, 5, SIZE, SIZE)
    x = torch.randn(shape, generator=rng).double().numpy()
    betas = Schedule(args).betas
    for t in range(5, -1, -1):
        eps = 0.3 * x + 0.01 * t
        noise = torch.randn(shape, generator=rng).double().numpy() if t else None
        x = _numpy_ancestral_step(x, eps, noise, t, betas)
    assert np.isfinite(x).all()
    expected = to_uint8(torch.from_numpy(x))
    assert np.abs(images[:, :4].astype(int) - expected[:, :4]).max() <= 1


def test_old_sampler_name_is_the_ancestral_chain(ddpm):
    family, args, network = ddpm
    old = family.sample(network, args, 2, torch.Generator().manual_seed(5), {"sampler": "ddpm"})
    new = family.sample(network, args, 2, torch.Generator().manual_seed(5), {"sampler": "ancestral"})
    assert old.tobytes() == new.tobytes()


def test_checkpoint_args_without_network_rebuild_the_monai_network(ddpm):
    _, args, network = ddpm
    assert args["network"] == "monai"
    old = {k: v for k, v in args.items() if k not in ("network", "schedule")}  # written before both existed
    rebuilt = build_network(old)
    assert type(rebuilt) is type(network)
    rebuilt.load_state_dict(network.state_dict())
    np.testing.assert_array_equal(Schedule(old).betas, np.linspace(1e-4, 0.02, args["timesteps"]))


def test_optimiser_is_adam_without_weight_decay(ddpm):
    family, args, network = ddpm
    optimizer = family.trainer(network, args, tiny_config()).optimizer
    assert type(optimizer) is torch.optim.Adam
    assert all(group["weight_decay"] == 0 and group["lr"] == 2e-3 for group in optimizer.param_groups)


GUIDED_TINY = {"generator.ddpm.network": "guided", "generator.ddpm.model_channels": 8,
               "generator.ddpm.channel_mult": [1, 2], "generator.ddpm.attention_resolutions": [16],
               "generator.ddpm.num_heads": 2, "generator.ddpm.norm_num_groups": 8}


@pytest.mark.parametrize("network", ["monai", "guided"])
@pytest.mark.parametrize("batch_gpu", [2, 4, 3])
def test_accumulated_step_equals_the_full_batch_step(network, batch_gpu):
    """Micro-batches of 2, 4 (and an uneven 3) give the full-batch loss and the same updated weights."""
    family = get_family("ddpm")
    cfg = tiny_config(**(GUIDED_TINY if network == "guided" else {}))
    args = family.model_args(cfg, SIZE)
    batch = torch.from_numpy(phantom_slices(8))
    results = []
    for micro in (0, batch_gpu):
        torch.manual_seed(0)
        net = family.build(args)
        trainer = family.trainer(net, args, tiny_config(**{**(GUIDED_TINY if network == "guided" else {}),
                                                            "generator.ddpm.batch_gpu": micro}))
        assert trainer.batch_gpu == micro
        loss = trainer.step(batch, torch.Generator().manual_seed(1))["loss"]
        results.append((loss, [p.detach().clone() for p in net.parameters()]))
    (full_loss, full), (acc_loss, acc) = results
    assert acc_loss == pytest.approx(full_loss, rel=1e-5)
    for a, b in zip(full, acc):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
