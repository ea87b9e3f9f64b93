"""The released DiffStyler design emulated for bench/run.py: k+1 UNet copies (base + one per style, LoRA merged),
each running [content, uncond, cond] every step, predictions fused by mask, then CFG (3(k+1) rows per step).
Its injection bookkeeping is left out, which only flatters it."""

from __future__ import annotations

import common


def reference_copies(model, loras, strength=1.0):
    """k+1 UNet copies (base first), each with one style's LoRA merged into its weights."""
    import torch

    copies = [model.model]
    for lora in loras:
        c = common.copy_unet(model)
        sd = c.state_dict()
        with torch.no_grad():
            for key, w in sd.items():
                base = "lora_unet_" + key[len("diffusion_model.") : -len(".weight")].replace(".", "_")
                if base + ".lora_down.weight" in lora:
                    down = lora[base + ".lora_down.weight"].to(w.device, torch.float32)
                    up = lora[base + ".lora_up.weight"].to(w.device, torch.float32)
                    alpha = float(lora[base + ".alpha"]) / down.shape[0]
                    w.add_((strength * alpha * (up @ down)).to(w.dtype))
        copies.append(c)
    return copies


def reference_sample(copies, inv, empty, neg, pos_list, masks_lat, cfg, counter=None):
    """The reference loop: every copy runs [content, uncond, cond]; predictions fused by mask, then CFG. ``counter``:
    a list that gets the rows of every UNet call."""
    import torch
    from comfyui_diffstyler.nodes.core.masks import fuse, fusion_weights

    dev = next(copies[0].parameters()).device
    sigmas = inv.sigmas.to(dev)
    x = inv.trajectory[0].to(dev)
    weights, bg_w = fusion_weights([m.to(dev) for m in masks_lat])
    ctx_e, ctx_n = empty[0][0].to(dev), neg[0][0].to(dev)
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            x_src = inv.content_input_at(s).to(dev)
            conds, unconds = [], []
            for c, pos in zip(copies, pos_list):
                inp = torch.cat([x_src, x, x])
                ctx = torch.cat([ctx_e, ctx_n, pos[0][0].to(dev)])
                out = c.apply_model(inp, s.repeat(3), c_crossattn=ctx, transformer_options={})
                if counter is not None:
                    counter.append(int(inp.shape[0]))
                unconds.append(out[1:2])
                conds.append(out[2:3])
            cond = fuse(conds[1:], weights, conds[0], bg_w)
            uncond = fuse(unconds[1:], weights, unconds[0], bg_w)
            den = uncond + (cond - uncond) * cfg
            x = x + (x - den) / s * (s_next - s)
    return x
