"""Helpers of the bad-input tests (tests/comfy/bad_inputs/): drive one node the way a graph does, build odd inputs.

Their fixtures (``probe``, ``stays_clean``, ``loras``, ``fastsam_models``) live in dst_fixtures.
"""

from __future__ import annotations

import torch

TRAIN_ARGS = dict(
    prompt="painting of <sss>", steps=2, learning_rate=1e-3, rank=2, targets="attention", seed=0, resolution=64
)


def add_style(mods, cond, mask, name="None", lora=None, strength=1.0, styles=None):
    """Style LoRA Loader: ``styles`` with one more style."""
    return mods.style.DiffStylerStyleLoRA.execute(name, strength, cond, mask, lora=lora, styles=styles).args[0]


def inject(mods, tracker, model, styles, feat=0.6, qk=0.5):
    """Cross-LoRA Attention Injector; the patched MODEL is recorded in ``tracker`` (dst_fixtures.stays_clean)."""
    patched = mods.inject.DiffStylerCrossLoRAInjector.execute(model, styles, feat, qk, "adaptive", True).args[0]
    tracker.patched.append(patched)
    return patched


def sample(mods, patched, inversion, prompts, styles, cfg=7.5, background="exact"):
    """Masked Feature Fusion Sampler with ``prompts["base"]`` / ``prompts["neg"]``; returns the latent samples."""
    node = mods.sample.DiffStylerMaskedFusionSampler
    return node.execute(patched, inversion, prompts["base"], prompts["neg"], cfg, background, styles).args[0]["samples"]


def invert(mods, tiny, latent, steps, clip="tiny", conditioning=None):
    """DDIM Inversion through its node on the sampler's grid."""
    clip = tiny.clip if clip == "tiny" else clip
    return mods.invert.DiffStylerInvert.execute(
        tiny.model, {"samples": latent}, steps, clip=clip, conditioning=conditioning, inversion_grid="sampling"
    )


def train(tiny, mods, image, **kw):
    """Train Style LoRA with TRAIN_ARGS (overridden by ``kw``); returns the node's outputs."""
    args = {**TRAIN_ARGS, **kw}
    return mods.train.DiffStylerTrainStyleLoRA.execute(tiny.model, tiny.clip, tiny.vae, image, **args).args


def half(h=64, w=64, left=True, batch=1):
    """A ``[batch,h,w]`` mask of the left (or right) half."""
    m = torch.zeros(batch, h, w)
    if left:
        m[:, :, : w // 2] = 1
    else:
        m[:, :, w // 2 :] = 1
    return m


def checked(result):
    """Raise a ``validate_inputs`` message as the ValueError ComfyUI shows before the run."""
    if result is not True:
        raise ValueError(result)
    return result


def mask_node(mods, image, fastsam=None, imgsz=64, mode="everything", points=""):
    """FastSAM Mask with the defaults of its widgets."""
    node = mods.segment.DiffStylerFastSAMMask
    return node.execute(image, fastsam, mode, points, "", "", imgsz, 0.4, 0.9, "union", 0, "none")


def unknown_unet():
    """A UNet with 2 levels (6 decoder blocks): not SD1.x, SD2.x or SDXL."""
    import dst_tiny

    cfg = dict(
        dst_tiny.SD15_UNET,
        channel_mult=[1, 2],
        num_res_blocks=[2, 2],
        transformer_depth=[1, 1, 1, 1],
        transformer_depth_output=[1] * 6,
    )
    return dst_tiny._patcher(dst_tiny.TinySD15(cfg).get_model({}))
