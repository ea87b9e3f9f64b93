"""Pure parts of style-LoRA training (no ComfyUI): sizes, timesteps, loss, LoRA factors, names, loss plot."""

from __future__ import annotations

import pytest
import torch
from comfyui_diffstyler.nodes.core import training as core


def test_config_defaults_are_the_papers():
    cfg = core.TrainingConfig()
    assert (cfg.steps, cfg.learning_rate, cfg.rank, cfg.targets, cfg.resolution) == (200, 2e-4, 16, "attention", 512)
    assert cfg.weight_decay == 1e-2
    assert cfg.lora_alpha == 16.0
    assert core.TrainingConfig(rank=4).lora_alpha == 4.0


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("steps", 0, "steps: expected at least 1"),
        ("rank", 0, "rank: expected a LoRA rank of at least 1"),
        ("learning_rate", 0.0, "learning_rate"),
        ("targets", "conv", "targets: expected one of"),
        ("resolution", 4, "resolution"),
    ],
)
def test_config_errors_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        core.TrainingConfig(**{field: value})


@pytest.mark.parametrize(
    ("h", "w", "res", "expected"),
    [
        (512, 512, 512, (512, 512)),
        (768, 1024, 512, (512, 680)),  # 682.7 -> 680
        (1024, 768, 512, (680, 512)),
        (100, 50, 64, (128, 64)),  # upscales too; aspect kept
        (64, 64, 60, (64, 64)),  # resolution itself rounded to a multiple of 8
        (10, 1000, 8, (8, 800)),
    ],
)
def test_training_size(h, w, res, expected):
    got = core.training_size(h, w, res)
    assert got == expected
    assert got[0] % 8 == 0 and got[1] % 8 == 0


def test_resize_images_shape_range_and_content():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 96, 128, 3, generator=g)
    out = core.resize_images(img, (48, 64))
    assert out.shape == (2, 48, 64, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # a constant image stays constant; a left/right split stays split
    flat = torch.full((1, 30, 40, 3), 0.25)
    assert torch.allclose(core.resize_images(flat, (16, 24)), torch.full((1, 16, 24, 3), 0.25), atol=1e-6)
    split = torch.zeros(1, 64, 64, 3)
    split[:, :, 32:] = 1.0
    small = core.resize_images(split, (8, 8))
    assert float(small[0, :, :3].max()) < 0.1 and float(small[0, :, 5:].min()) > 0.9
    with pytest.raises(ValueError, match=r"image: expected an IMAGE \[B,H,W,C\]"):
        core.resize_images(torch.zeros(64, 64, 3), (8, 8))


def test_timestep_sampling_covers_the_full_range_and_is_seeded():
    a = core.sample_timestep_indices(torch.Generator().manual_seed(3), 20000, 1000)
    b = core.sample_timestep_indices(torch.Generator().manual_seed(3), 20000, 1000)
    assert torch.equal(a, b)
    assert a.dtype == torch.int64
    assert int(a.min()) == 0 and int(a.max()) == 999
    hist = torch.bincount(a // 100, minlength=10).float()  # ten bins of 100 timesteps, ~2000 each
    assert float(hist.min()) > 1700 and float(hist.max()) < 2300
    assert not torch.equal(a, core.sample_timestep_indices(torch.Generator().manual_seed(4), 20000, 1000))


def test_fixed_timesteps_spread_evenly():
    t = core.fixed_timestep_indices(1000, 10)
    assert t.tolist() == [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]
    assert core.fixed_timestep_indices(1000, 1).tolist() == [500]
    with pytest.raises(ValueError, match="count"):
        core.fixed_timestep_indices(1000, 0)


def test_output_space_mse_is_the_eps_and_v_loss():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 4, 8, 8, generator=g)
    noise = torch.randn(3, 4, 8, 8, generator=g)
    sigma = torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1, 1)
    x_t = x0 + sigma * noise
    # EPS: denoised = x_t - eps_pred * sigma, B = -sigma
    eps_pred = torch.randn(3, 4, 8, 8, generator=g)
    denoised = x_t - eps_pred * sigma
    got = core.output_space_mse(denoised, x0, -sigma)
    assert torch.allclose(got, ((eps_pred - noise) ** 2).mean(), rtol=1e-5)
    # v-prediction (sigma_data 1): denoised = x_t/(s^2+1) - v_pred * s/sqrt(s^2+1); v = (noise - s*x0)/sqrt(1+s^2)
    v_pred = torch.randn(3, 4, 8, 8, generator=g)
    c = (sigma**2 + 1).sqrt()
    denoised_v = x_t / c**2 - v_pred * sigma / c
    v = (noise - sigma * x0) / c
    got_v = core.output_space_mse(denoised_v, x0, -sigma / c)
    assert torch.allclose(got_v, ((v_pred - v) ** 2).mean(), rtol=1e-5)
    # a perfect prediction has zero loss
    assert float(core.output_space_mse(x0.clone(), x0, -sigma)) == 0.0


def test_lora_factors_init_and_delta():
    g = torch.Generator().manual_seed(0)
    down, up = core.init_lora_factors((320, 768), 16, g)
    assert down.shape == (16, 768) and up.shape == (320, 16)
    assert down.dtype == up.dtype == torch.float32
    assert float(up.abs().max()) == 0.0
    # the released initialisation (design Sec. 5): down ~ N(0, (1/rank)^2), not kaiming-uniform (bound 1/sqrt(in),
    # std 0.021 here: 3x smaller than 1/16)
    assert abs(float(down.std()) - 1.0 / 16) < 0.03 / 16, float(down.std())
    assert abs(float(down.mean())) < 0.003
    assert float(down.abs().max()) > 3.5 / 16  # Gaussian tails (12288 draws): a uniform law stops at its bound
    d2, _ = core.init_lora_factors((320, 768), 16, torch.Generator().manual_seed(0))
    assert torch.equal(down, d2)
    cd, cu = core.init_lora_factors((64, 32, 1, 1), 4, g)
    assert cd.shape == (4, 32, 1, 1) and cu.shape == (64, 4, 1, 1)
    with pytest.raises(ValueError, match="1x1 conv"):
        core.init_lora_factors((64, 32, 3, 3), 4, g)
    # delta = scale * up @ down, in the weight's shape
    up = torch.randn(64, 4, 1, 1, generator=g)
    delta = core.lora_delta(cd, up, 0.5, (64, 32, 1, 1))
    assert delta.shape == (64, 32, 1, 1)
    assert torch.allclose(delta[:, :, 0, 0], 0.5 * up[:, :, 0, 0] @ cd[:, :, 0, 0])


def test_attention_projection_names():
    yes = [
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
        "output_blocks.11.1.transformer_blocks.0.attn2.to_k",
        "middle_block.1.transformer_blocks.0.attn1.to_v",
        "input_blocks.4.1.transformer_blocks.0.attn2.to_out.0",
    ]
    no = [
        "input_blocks.1.1.transformer_blocks.0.attn1.to_out",  # the Sequential, not its Linear
        "input_blocks.1.1.transformer_blocks.0.attn1.to_out.1",
        "input_blocks.1.1.transformer_blocks.0.ff.net.2",
        "input_blocks.1.1.proj_in",
        "input_blocks.1.1.transformer_blocks.0.attn3.to_q",
    ]
    assert all(core.is_attention_projection(n) for n in yes)
    assert not any(core.is_attention_projection(n) for n in no)


def test_kohya_prefix_and_bad_keys():
    assert (
        core.kohya_prefix("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight")
        == "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_out_0"
    )
    with pytest.raises(ValueError, match="diffusion_model"):
        core.kohya_prefix("model.diffusion_model.x.weight")
    with pytest.raises(ValueError, match="diffusion_model"):
        core.kohya_prefix("diffusion_model.x.bias")


@pytest.mark.parametrize("bad", ["a/b", "a\\b", "../x", "..", "x..y", "C:evil", ".hidden", "sub/dir/name"])
def test_save_name_refuses_paths(bad):
    with pytest.raises(ValueError, match="save_name"):
        core.check_save_name(bad)


def test_save_name_plain():
    assert core.check_save_name("") == ""
    assert core.check_save_name("  ") == ""
    assert core.check_save_name("my style") == "my style"
    assert core.check_save_name("deer_v2.safetensors") == "deer_v2"


def test_moving_average():
    assert core.moving_average([1, 2, 3, 4], 2) == [1.0, 1.5, 2.5, 3.5]
    assert core.moving_average([5.0], 10) == [5.0]
    assert core.moving_average([], 3) == []
    assert core.moving_average([1, 3], 1) == [1.0, 3.0]


def test_loss_curve_image():
    losses = [1.0 / (1 + 0.05 * i) + 0.1 * ((-1) ** i) for i in range(200)]
    img = core.plot_loss_curve(losses, width=400, height=240)
    assert img.shape == (1, 240, 400, 3) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    px = img[0]
    red = (px[..., 0] > 0.6) & (px[..., 1] < 0.35) & (px[..., 2] < 0.35)  # the moving average
    blue = (px[..., 2] > 0.8) & (px[..., 0] < 0.7) & (px[..., 0] > 0.4)  # the raw loss
    black = px.sum(-1) < 0.3  # axes and labels
    assert int(red.sum()) > 200 and int(blue.sum()) > 200 and int(black.sum()) > 400
    # the moving average falls: its pixels on the left sit higher (smaller row) than on the right
    rows, cols = red.nonzero(as_tuple=True)
    left, right = rows[cols < 150].float().mean(), rows[cols > 300].float().mean()
    assert float(left) < float(right)
    # degenerate inputs still draw
    for vals in ([], [0.5], [2.0, 2.0, 2.0], [float("nan"), 1.0, float("inf"), 0.5]):
        out = core.plot_loss_curve(vals, width=200, height=120)
        assert out.shape == (1, 120, 200, 3) and torch.isfinite(out).all()
