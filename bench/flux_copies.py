"""The released DiffStyler design carried over to Flux.1, emulated for bench/flux_cost.py: k+1 Flux models in memory
(the base and one per style, each style's LoRA merged into its own model's weights by ComfyUI's LoRA loader), each
running [content, cond] every step (2(k+1) rows in k+1 calls at cfg 1), velocities fused by mask on the token grid,
one Euler step. Its injection bookkeeping is left out, which only flatters it."""

from __future__ import annotations


def build_copies(build_model, loras: list[dict]) -> list:
    """k+1 ModelPatchers, each on its own model from ``build_model()`` (same weights, separate tensors): the base
    first, then one per LoRA in ``loras`` (kohya layout), merged by ComfyUI's loader (``load_lora_for_models``) when
    the models are loaded (:func:`load`)."""
    import comfy.sd

    copies = [build_model()]
    for lora in loras:
        patched, _clip = comfy.sd.load_lora_for_models(build_model(), None, lora, 1.0, 0.0)
        copies.append(patched)
    return copies


def load(copies: list) -> None:
    """Load every copy as a sampler would (ComfyUI's model management merges each one's LoRA into its weights; a
    no-op when they are loaded already)."""
    import comfy.model_management as mm

    mm.load_models_gpu(list(copies))


def transformer_options(patcher) -> dict:
    """What ComfyUI's sampler hands ``patcher``'s diffusion model: its model options' ``transformer_options`` with
    the patcher's own wrappers merged in (as ``sampler_helpers.prepare_model_patcher`` does)."""
    import comfy.patcher_extension

    options = dict(patcher.model_options.get("transformer_options", {}))
    options["wrappers"] = comfy.patcher_extension.merge_nested_dicts(options.get("wrappers", {}), patcher.wrappers)
    return options


def sample(copies, inv, empty, prompts, token_masks):
    """The copy-per-style loop from the inversion ``inv``'s start: every copy ``i`` runs [content, cond] in one call
    (content: the inverted latent at this sigma with the empty prompt ``empty`` at guidance 1.0; cond: the current
    latent with ``prompts[i]``, a CONDITIONING with its own guidance), the velocities (as denoised latents) fused
    with ``token_masks`` (``[1,1,h,w]`` on the token grid; later masks win), then an Euler step to the next sigma.
    Each copy's diffusion model gets its ModelPatcher's wrappers (the bench's row counter). Returns the final
    model-space latent ``[1,16,h,w]``."""
    import comfy.model_management as mm
    import torch
    from comfyui_diffstyler.nodes.core.masks import fuse, fusion_weights

    load(copies)
    dev = mm.get_torch_device()
    sigmas = inv.sigmas.to(dev)
    x = inv.trajectory[0].to(dev)
    weights, bg_w = fusion_weights([m.to(dev) for m in token_masks])
    ctx_e, pooled_e = empty[0][0].to(dev), empty[0][1]["pooled_output"].to(dev)
    conds = []
    for c in prompts:
        ctx = torch.cat([ctx_e, c[0][0].to(dev)])
        pooled = torch.cat([pooled_e, c[0][1]["pooled_output"].to(dev)])
        guidance = torch.tensor([1.0, float(c[0][1].get("guidance", 1.0))], device=dev)
        conds.append((ctx, pooled, guidance))
    options = [transformer_options(c) for c in copies]
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            x_src = inv.content_input_at(inv.sigmas[i]).to(dev)
            inp = torch.cat([x_src, x])
            den = []
            for copy, (ctx, pooled, guidance), opts in zip(copies, conds, options):
                out = copy.model.apply_model(
                    inp, s.repeat(2), c_crossattn=ctx, y=pooled, guidance=guidance, transformer_options=opts
                )
                den.append(out[1:2])
            fused = fuse(den[1:], weights, den[0], bg_w)
            x = x + (x - fused) / s * (s_next - s)
    return x
