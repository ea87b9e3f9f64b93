"""Styles held by a MODEL (Style Model node): each runs in an extra UNet call of its own model per step.

The Injector patched a clone of each such model for the content injection (no LoRA layers) and handed it to ComfyUI
as an additional model of the sampled one, so it is loaded with the base UNet. At each step its call holds its
content row (while its windows are open) and its cond/uncond rows; the guider fuses its prediction by mask.
"""

from __future__ import annotations

import comfy.model_patcher
import comfy.patcher_extension
import comfy.samplers

from ..core.rows import Source
from .injector.install import style_model_patchers
from .injector.state import RunPlan


class ModelStyles:
    """The MODEL styles of one run: style index -> the loaded ModelPatcher of that style."""

    def __init__(self, model_patcher, state, active: list[int]):
        loaded = style_model_patchers(model_patcher)
        self.state = state
        self.patchers: dict = {}
        for i in active:
            if i in state.style_models:
                if i not in loaded:
                    raise RuntimeError(f"DiffStyler: style {i + 1}'s MODEL was not loaded with the sampler's model")
                self.patchers[i] = loaded[i]
        self._options: dict = {}
        self.uncond = True

    def activate(self, uncond: bool, sigmas, content_latent_at, content_conditioning: dict, latent_hw) -> None:
        """Give each MODEL style's patches their run: its content row (no LoRA on it), its cond/uncond rows."""
        self.uncond = uncond
        s = self.state.settings
        for i, mp in self.patchers.items():
            mp.pre_run()  # as CFGGuider does for the sampled model (its BaseModel's current patcher)
            self.state.style_models[i].run = RunPlan(
                roles=[(i, False)] + ([(i, True)] if uncond else []),
                branch_source={i: Source.SHARED},  # that model's own content row
                branch_windows={i: s.style_windows},
                lora_branch_to_style={},
                sample_sigmas=sigmas,
                content_latent_at=content_latent_at,
                content_conditioning=content_conditioning,
                qk_blend=s.qk_blend,
                lora_in_injected_attention=True,
                model_sampling=mp.get_model_object("model_sampling"),
                latent_hw=latent_hw,
            )

    def pair(self, i: int, layout: list, x, timestep, model_options):
        """(cond, uncond or None) of MODEL style ``i`` for the cond/uncond ``layout`` of one base call: one
        calc_cond_batch call of its own model, with that model's options, wrappers and callbacks."""
        mp = self.patchers[i]
        options = self._options.get(i)
        if options is None:  # as ComfyUI prepares the sampled model
            options = comfy.model_patcher.create_model_options_clone(mp.model_options)
            own = options.setdefault("transformer_options", {})
            merge = comfy.patcher_extension.merge_nested_dicts
            merge(own.setdefault("wrappers", {}), mp.wrappers, copy_dict1=False)
            merge(own.setdefault("callbacks", {}), mp.callbacks, copy_dict1=False)
            for key, value in model_options.get("transformer_options", {}).items():
                if key not in own and key not in ("patches", "patches_replace", "wrappers", "callbacks"):
                    own[key] = value  # the run's values (sample_sigmas, ...), not the base model's patches
            self._options[i] = options
        out = comfy.samplers.calc_cond_batch(mp.model, layout, x, timestep, options)
        return out[0], (out[1] if self.uncond else None)

    def cleanup(self) -> None:
        for sub in self.state.style_models.values():
            sub.run = None
            sub.call = None
        for mp in self.patchers.values():
            mp.cleanup()
        self.patchers = {}
