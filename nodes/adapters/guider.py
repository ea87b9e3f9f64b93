"""The DiffStyler guider (GUIDER) and DDIM sampler (SAMPLER): masked fusion of every style branch.

Every step makes one UNet call per chunk holding the content row (added by the Injector's wrapper
while an injection window is open) and the cond/uncond rows of every style; predictions are fused by
mask before CFG (paper Sec. 3.3). With ``background='exact'`` the latent outside the masks follows
the inversion trajectory and ends on the clean content latent; ``'model'`` is the reference
behaviour, a base branch without LoRA predicting the background.
"""

from __future__ import annotations

import logging
import math

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.samplers
import torch
from tqdm.auto import trange

from ..core.inversion import InversionResult
from ..core.masks import MASK_MODES, fuse, fusion_weights, inside_region, is_empty, resize_mask_to_latent
from ..core.schedule import ddim_step, find_sigma_index
from ..core.styles import Style
from . import inversion as inversion_adapter
from . import patches, style_cache

logger = logging.getLogger(__name__)

BACKGROUNDS = ("exact", "model")
FUSED_BRANCH = 1000


class DiffStylerGuider(comfy.samplers.CFGGuider):
    def __init__(
        self,
        model_patcher,
        inversion: InversionResult,
        styles: list[Style] | None,
        positive,
        negative,
        cfg: float,
        background: str = "exact",
        use_cache: bool = True,
        masks: str = "hard",
    ):
        super().__init__(model_patcher)
        if background not in BACKGROUNDS:
            raise ValueError(f"background: expected one of {BACKGROUNDS}, got {background!r}")
        if masks not in MASK_MODES:
            raise ValueError(f"masks: expected one of {MASK_MODES}, got {masks!r}")
        self.mask_mode = masks
        state = patches.state_of(model_patcher)
        if state is None:
            raise ValueError(
                "model: this MODEL has no DiffStyler patches: connect the MODEL output of Cross-LoRA Attention "
                "Injector (DiffStyler) to the sampler"
            )
        if not isinstance(inversion, InversionResult):
            raise TypeError("inversion: connect the inversion output of DDIM Inversion (DiffStyler)")
        styles = list(styles) if styles else []
        if styles and tuple(s.uid for s in styles) != state.style_ids:
            raise ValueError(
                f"styles: the sampler got {len(styles)} style(s) that differ from the {state.n_styles} the Injector "
                "patched (LoRA, strength or order): connect the same DIFFSTYLER_STYLES to both nodes"
            )
        self.state = state
        self.inversion = inversion
        self.styles = styles
        self.background = background
        self.use_cache = use_cache
        conds = {"positive": positive, "negative": negative, "content": inversion.conditioning}
        for i, s in enumerate(styles):
            conds[f"style_{i}"] = s.conditioning
        self.inner_set_conds(conds)
        self.set_cfg(cfg)
        self._prepare_masks()
        self._run = None
        self._model_styles: dict = {}  # MODEL styles of the run in progress: style index -> loaded ModelPatcher

    # ------------------------------------------------------------------ setup
    def _prepare_masks(self):
        b, _c, h, w = self.inversion.content_latent.shape
        self.active: list[int] = []
        masks = []
        for i, s in enumerate(self.styles):
            if s.mask is None:  # a global style: the whole picture
                m = torch.ones(b, 1, h, w)
            else:
                m = resize_mask_to_latent(s.mask, b, h, w, f"style {i + 1} ({s.name}) mask", self.mask_mode)
            if is_empty(m):
                logger.warning(
                    "DiffStyler: style %d (%s) has an all-zero mask at latent size; it is skipped", i + 1, s.name
                )
                continue
            if s.never_active:  # an empty step range: exactly as if the style were absent
                logger.info("DiffStyler: style %d (%s) has an empty step range; it is skipped", i + 1, s.name)
                continue
            self.active.append(i)
            masks.append(m)
        self.masks = masks
        self._masks_by_style = dict(zip(self.active, masks))
        timed = [i for i in self.active if self.styles[i].timed]
        if timed and self.state.settings.get("fusion") == "feature":
            i = timed[0]
            raise ValueError(
                f"styles: style {i + 1} ({self.styles[i].name}) is active on part of the sampling only "
                f"({self.styles[i].start_percent} to {self.styles[i].end_percent}), which feature fusion does not "
                "support: set the Injector's fusion to 'noise', or the style's range to 0 - 1"
            )
        # the styles active at each sampling step: ComfyUI's rule for a timestep range (ConditioningSetTimestepRange):
        # active where percent_to_sigma(end) <= sigma <= percent_to_sigma(start)
        ms = self.model_patcher.get_model_object("model_sampling")
        bounds = {}
        for i in self.active:
            st = self.styles[i]
            bounds[i] = (float(ms.percent_to_sigma(st.start_percent)), float(ms.percent_to_sigma(st.end_percent)))
        sigmas = self.inversion.sigmas.tolist()
        self.step_styles: list[tuple[int, ...]] = [
            tuple(i for i in self.active if bounds[i][1] <= sig <= bounds[i][0]) for sig in sigmas[:-1]
        ]
        self._phases: dict[tuple[int, ...], tuple] = {}
        self.weights, self.bg_weight, _inside = self._phase(tuple(self.active))  # every style: feature fusion's
        # the region whose latent the run returns as styled (exact background): the styles active at the last step
        self.final_inside = self._phase(self.step_styles[-1] if self.step_styles else ())[2]

    def _phase(self, styles: tuple[int, ...]):
        """(fusion weights, background weight, inside) for the styles active together (painter's order)."""
        if styles not in self._phases:
            b, _c, h, w = self.inversion.content_latent.shape
            masks = [self._masks_by_style[i] for i in styles]
            if masks:
                weights, bg = fusion_weights(masks)
                inside = inside_region(masks)
            else:
                weights, bg = [], torch.ones(b, 1, h, w)
                inside = torch.zeros(b, 1, h, w, dtype=torch.bool)
            self._phases[styles] = (weights, bg, inside)
        return self._phases[styles]

    def _device_phase(self, step: int, x):
        """``_phase`` of the styles active at sampling step ``step``, on ``x``'s device and dtype (kept per run)."""
        styles = self.step_styles[step] if 0 <= step < len(self.step_styles) else tuple(self.active)
        key = (styles, x.device, x.dtype)
        if key not in self._dev_phases:
            weights, bg, inside = self._phase(styles)
            self._dev_phases[key] = (
                styles,
                [w.to(x.device, x.dtype) for w in weights],
                bg.to(x.device, x.dtype),
                inside.to(x.device),
            )
        return self._dev_phases[key]

    def _step_of(self, timestep) -> int:
        return find_sigma_index(self.inversion.sigmas, timestep.flatten()[0] if torch.is_tensor(timestep) else timestep)

    def _activate(self, x, timestep, model_options):
        inv = self.inversion
        content = self.conds["content"][0]
        cond_obj = comfy.samplers.get_area_and_mult(content, x, timestep)
        # MODEL styles run in an extra UNet call of their own model each; the base call holds every other branch
        loaded = patches.style_model_patchers(self.model_patcher)
        self._model_styles = {}
        for i in self.active:
            if i in self.state.style_models:
                if i not in loaded:
                    raise RuntimeError(f"DiffStyler: style {i + 1}'s MODEL was not loaded with the sampler's model")
                self._model_styles[i] = loaded[i]
        branches = [i for i in self.active if i not in self._model_styles]
        base_branch = len(self.styles)
        self._fused = self.state.settings.get("fusion") == "feature" and bool(self.active)
        if self._fused:
            branches = [FUSED_BRANCH]
        elif self.background == "model":
            branches.append(base_branch)
        traj = inv.trajectory.to(x.device, x.dtype)
        self._traj = traj

        def content_latent_at(step):  # the inverted latent at the sampling timestep itself (design Sec. 5)
            return traj[inv.content_step_index(step)]

        s = self.state.settings
        self._branches = branches
        # as ComfyUI's sampling_function: no uncond rows at cfg 1 unless a node asked for them
        self._uncond = not math.isclose(self.cfg, 1.0) or bool(model_options.get("disable_cfg1_optimization"))
        roles = []
        self._conds_list = []
        for br in branches:
            pos = self.conds["positive"] if br in (base_branch, FUSED_BRANCH) else self.conds[f"style_{br}"]
            self._conds_list.append(pos)
            roles.append((br, False))
            if self._uncond:
                self._conds_list.append(self.conds["negative"])
                roles.append((br, True))
        self._check_areas(tuple(x.shape[-2:]))
        style_windows = (float(s["feature_injection_end"]), float(s["qk_injection_end"]))
        # released: the base branch injects ResBlock features and Q/K on every step; "style windows" is our option
        base_windows = (1.0, 1.0) if s.get("base_injection", "all steps") == "all steps" else style_windows
        per_style = s.get("content_rows", "per style") == "per style"
        lora_styles = self.state.lora_styles
        sources, windows = {}, {}
        for br in branches:
            if br == base_branch:
                sources[br], windows[br] = patches.SHARED_SOURCE, base_windows
            elif br == FUSED_BRANCH:
                sources[br], windows[br] = patches.SHARED_SOURCE, style_windows
            else:
                sources[br] = br if (per_style and br in lora_styles) else patches.SHARED_SOURCE
                windows[br] = style_windows
        self._run = patches.RunPlan(
            roles=roles,
            branch_source=sources,
            branch_windows=windows,
            lora_branch_to_style={br: br for br in branches if br != base_branch},
            sample_sigmas=inv.sigmas,
            content_latent_at=content_latent_at,
            content_conditioning=dict(cond_obj.conditioning),
            qk_blend=s["qk_blend"],
            lora_in_injected_attention=s["lora_in_injected_attention"],
            model_sampling=self.inner_model.model_sampling,
            feature_cache=inv.feature_cache if self.use_cache else None,
            source_cache=style_cache.run_cache(inv, self.model_patcher, self.state),
        )
        if self._fused:

            def ctx(key):
                return self.conds[key][0]["model_conds"]["c_crossattn"].cond

            neg = ctx("negative")
            self._run.fused_branch = FUSED_BRANCH
            by_style = dict(zip(self.active, self.weights))
            self._run.fused_weights = [
                by_style[i].to(x.device, x.dtype) if i in by_style else None for i in range(len(self.styles))
            ] + [self.bg_weight.to(x.device, x.dtype)]
            self._run.fused_contexts = [
                (ctx(f"style_{i}"), neg) if i in by_style else None for i in range(len(self.styles))
            ] + [(ctx("positive"), neg)]
        self._run.latent_hw = tuple(x.shape[-2:])
        self._run.cond_batch_handler = self._cond_batch
        self.state.run = self._run
        self._style_options = {}
        for i, mp in self._model_styles.items():  # each MODEL style's call: its content row, its cond/uncond rows
            mp.pre_run()  # as CFGGuider does for the sampled model (its BaseModel's current patcher); cleanup in sample
            roles_i = [(i, False)] + ([(i, True)] if self._uncond else [])
            self.state.style_models[i].run = patches.RunPlan(
                roles=roles_i,
                branch_source={i: patches.SHARED_SOURCE},  # that model's own content row (no LoRA on it)
                branch_windows={i: style_windows},
                lora_branch_to_style={},
                sample_sigmas=inv.sigmas,
                content_latent_at=content_latent_at,
                content_conditioning=dict(cond_obj.conditioning),
                qk_blend=s["qk_blend"],
                lora_in_injected_attention=True,
                model_sampling=mp.get_model_object("model_sampling"),
                latent_hw=tuple(x.shape[-2:]),
            )
        self._dev_phases = {}
        self._content_x0 = traj[-1]

    def _check_areas(self, hw):
        """Refuse prompts that cover part of the latent (an area, or a mask with its area set to the bounds):
        ComfyUI runs them on a crop, where the content row and the injected features do not line up. Read from
        the conditioning as given (ComfyUI copies every area into the other prompts when it prepares them)."""
        names = [("positive", "positive"), ("negative", "negative")]
        names += [(f"style_{i}", f"styles (style {i + 1}, {s.name}: its prompt)") for i, s in enumerate(self.styles)]
        for key, name in names:
            for c in self.original_conds.get(key) or ():
                area = c.get("area")
                if c.get("mask") is not None and c.get("set_area_to_bounds"):
                    what = "a conditioning mask with its area set to the mask bounds"
                elif area is not None and len(area) == 4 and area[0] != "percentage":
                    height, width, y, x = (int(v) for v in area)
                    if y <= 0 and x <= 0 and height >= hw[0] and width >= hw[1]:
                        continue
                    what = f"an area of {height}x{width} at ({y}, {x}) of the {hw[0]}x{hw[1]} latent"
                elif area is not None:
                    if tuple(float(v) for v in area[1:]) == (1.0, 1.0, 0.0, 0.0):
                        continue
                    what = f"an area of {tuple(area[1:])} (height, width, y, x as fractions)"
                else:
                    continue
                raise ValueError(
                    f"{name}: this conditioning covers part of the latent ({what}, from ConditioningSetArea or "
                    "ConditioningSetMask). DiffStyler places each style by its mask: remove the area (or set the "
                    "conditioning mask's area to 'default') and give the region as a style's mask"
                )

    # ------------------------------------------------------------------ CFGGuider hooks
    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        if self._run is None:
            self._activate(x, timestep, model_options)
            self._check_replaces(model_options)
        if not self._conds_list and not self._model_styles:  # nothing to stylize: the content itself
            return self._content_x0.expand_as(x).clone()
        # ComfyUI's own sampling function (its pre-CFG, CFG and post-CFG hooks included); every calc_cond_batch
        # call it or a hook makes reaches _cond_batch through the Injector's CALC_COND_BATCH wrapper
        return super().predict_noise(x, timestep, model_options, seed)

    def _fused_pair(self, out, x, step, extra=None):
        """(cond, uncond or None) of a calc_cond_batch output laid out as ``self._conds_list`` (and the MODEL styles'
        own predictions ``extra``: style -> (cond, uncond)): fused by mask."""
        if self._fused:  # one cond/uncond pair shared by every style
            return out[0], (out[1] if self._uncond else None)
        return self._fuse_branches(out, x, step, extra or {})

    def _model_style_pair(self, i, mp, batch, conds, x, timestep, model_options):
        """(cond, uncond) of MODEL style ``i``: one calc_cond_batch call of its own model (its content row added by
        that model's DiffStyler wrapper), for the same cond/uncond pair of entries as the base call."""
        positive = self.conds.get("positive")
        layout = []
        for uncond in (False, True) if self._uncond else (False,):
            j = batch.get(uncond)
            if j is None:
                layout.append(None)
            elif uncond:
                layout.append(self.conds["negative"])
            else:
                layout.append(self.conds[f"style_{i}"] if conds[j] is positive else conds[j])
        options = self._style_options.get(i)
        if options is None:  # as ComfyUI prepares the sampled model: its options, its wrappers and callbacks
            options = comfy.model_patcher.create_model_options_clone(mp.model_options)
            own = options.setdefault("transformer_options", {})
            merge = comfy.patcher_extension.merge_nested_dicts
            merge(own.setdefault("wrappers", {}), mp.wrappers, copy_dict1=False)
            merge(own.setdefault("callbacks", {}), mp.callbacks, copy_dict1=False)
            for key, value in model_options.get("transformer_options", {}).items():
                if key not in own and key not in ("patches", "patches_replace", "wrappers", "callbacks"):
                    # the run's values (sample_sigmas, ...), not the base model's patches
                    own[key] = value
            self._style_options[i] = options
        out = comfy.samplers.calc_cond_batch(mp.model, layout, x, timestep, options)
        return out[0], (out[1] if self._uncond else None)

    def _cond_batch(self, executor, model, conds, x, timestep, model_options):
        """Every calc_cond_batch call of the run: the sampling function's ``[positive, negative]`` (``[positive,
        None]`` at cfg 1) and those of guidance hooks, each with its own model_options (PAG's or SAG's post-CFG
        function asking the model again, Skip Layer Guidance's calc_cond_batch function). Each entry gets what
        DiffStyler predicts for it: every branch evaluated and fused by mask. The run's positive (negative) stands
        for each branch's own cond (uncond) prompt; another conditioning replaces each branch's cond prompt. One
        UNet batch (``self._conds_list``'s layout) per cond/uncond pair of entries."""
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        step = self._step_of(timestep)
        live = set(self._device_phase(step, x)[0])  # the styles active at this step: no rows for the others
        base_branch = len(self.styles)
        results = [torch.zeros_like(x) if entry is None else None for entry in conds]  # as calc_cond_batch does
        pending = [(i, entry is negative and self._uncond) for i, entry in enumerate(conds) if entry is not None]
        while pending:
            batch, rest = {}, []  # is_uncond -> entry index, at most one of each per UNet batch
            for i, uncond in pending:
                if uncond in batch:
                    rest.append((i, uncond))
                else:
                    batch[uncond] = i
            pending = rest
            layout = []
            for p, (branch, uncond) in enumerate(self._run.roles):
                i = batch.get(uncond)
                if i is None or (branch < base_branch and branch not in live):
                    layout.append(None)
                elif uncond or conds[i] is positive:
                    layout.append(self._conds_list[p])
                else:
                    layout.append(conds[i])
            if any(entry is not None for entry in layout):
                out = executor(model, layout, x, timestep, model_options)
            else:  # no branch of the base call active: no UNet call at all
                out = [torch.zeros_like(x) for _entry in layout]
            extra = {}
            for i, mp in self._model_styles.items():
                if i in live:
                    extra[i] = self._model_style_pair(i, mp, batch, conds, x, timestep, model_options)
            cond_f, uncond_f = self._fused_pair(out, x, step, extra)
            for uncond, i in batch.items():
                results[i] = uncond_f if uncond else cond_f
        return results

    def _check_replaces(self, model_options):
        """Warn once per run when a node patched after the Injector turned DiffStyler's attention off."""
        lost = patches.overridden_replaces(self.state, model_options)
        if not lost:
            return
        what = {"attn1": "self-attention Q/K injection", "attn2": "feature-fusion cross-attention"}
        kinds = sorted({kind for kind, _slot, _fn in lost})
        logger.warning(
            "DiffStyler: %d attention layer(s) the Cross-LoRA Attention Injector patched were replaced after it by "
            "another node (%s at %s): DiffStyler's %s is off there. Connect that node before the Injector (the "
            "Injector keeps the attention replaces it finds on its input MODEL active).",
            len(lost),
            lost[0][2],
            lost[0][1],
            " and ".join(what[k] for k in kinds),
        )

    def _fuse_branches(self, out, x, step, extra):
        """Noise fusion: the cond (and uncond) prediction of every style active at ``step`` blended by its mask
        weights (a later active style wins where masks overlap); the background rule everywhere else."""
        per = 2 if self._uncond else 1
        cond_preds = {br: out[j * per] for j, br in enumerate(self._branches)}
        uncond_preds = {br: out[j * per + 1] for j, br in enumerate(self._branches)} if self._uncond else None
        for i, (c, u) in extra.items():
            cond_preds[i] = c
            if self._uncond:
                uncond_preds[i] = u
        base_branch = len(self.styles)
        if self.background == "model":
            bg_c = cond_preds[base_branch]
            bg_u = uncond_preds[base_branch] if self._uncond else None
        else:
            bg_c = bg_u = self._content_x0.expand_as(x)
        styles, weights, bg_weight, _inside = self._device_phase(step, x)
        cond_f = fuse([cond_preds[i] for i in styles], weights, bg_c, bg_weight)
        uncond_f = None
        if self._uncond:
            uncond_f = fuse([uncond_preds[i] for i in styles], weights, bg_u, bg_weight)
        return cond_f, uncond_f

    def diffstyler_initial_latent(self, x):
        """The sampler starts exactly on x_T of the inversion (model space)."""
        return self.inversion.trajectory[0].to(x.device, x.dtype)

    def diffstyler_final_sigma(self) -> float:
        """Where the last step goes instead of sigma 0: the released pipeline's last DDIM step ends at
        alphas_cumprod[0] (``set_alpha_to_one`` false), i.e. at the model's smallest sigma (design Sec. 5)."""
        return float(self.inner_model.model_sampling.sigma_min)

    def diffstyler_final(self, x, sigma):
        """The released pipeline's output is the VP latent at alphas_cumprod[0]: ``z = x * sqrt(alpha)``."""
        return x / math.sqrt(1.0 + sigma * sigma)

    def diffstyler_post_step(self, x, sigma_next):
        """Exact background: outside the masks of the styles active in the step just made, the latent is the
        inversion trajectory's."""
        if self.background != "exact":
            return x
        nxt = self.inversion.checked_index(sigma_next)
        inside = self._device_phase(nxt - 1, x)[3]
        return torch.where(inside, x, self._traj[nxt])

    def sample(
        self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None
    ):
        inv = self.inversion
        inversion_adapter.check_inversion(inv, self.model_patcher, sigmas.cpu(), inv.content_latent.shape)
        if latent_image is not None and tuple(latent_image.shape) != tuple(inv.content_latent.shape):
            raise ValueError(
                f"latent_image: got shape {list(latent_image.shape)} but the inversion's content latent is "
                f"{list(inv.content_latent.shape)}: connect the inverted latent of the same DDIM Inversion"
            )
        x_t = self.model_patcher.model.process_latent_out(inv.trajectory[0].clone())
        self._run = None
        try:
            out = super().sample(torch.zeros_like(x_t), x_t, sampler, sigmas, None, callback, disable_pbar, seed)
        finally:
            self.state.run = None
            self.state.call = None
            for sub in self.state.style_models.values():
                sub.run = None
                sub.call = None
            for mp in self._model_styles.values():
                mp.cleanup()
            self._model_styles = {}
            self._run = None
        if self.background == "exact":
            content = inv.content_latent.to(out.device, out.dtype)
            out = torch.where(self.final_inside.to(out.device), out, content)
        return out


@torch.no_grad()
def sample_diffstyler_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DDIM (eta 0) that honours a DiffStyler guider's exact start and background; plain DDIM otherwise."""
    extra_args = {} if extra_args is None else extra_args
    guider = getattr(model, "inner_model", None)
    hooks = guider if hasattr(guider, "diffstyler_post_step") else None
    if hooks is not None:
        x = hooks.diffstyler_initial_latent(x)
    s_in = x.new_ones([x.shape[0]])
    values = sigmas.tolist()  # the step arithmetic and the background lookup in Python: no device sync per step
    last = len(sigmas) - 2
    for i in trange(len(sigmas) - 1, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma, sigma_next = values[i], values[i + 1]
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        eps = (x - denoised) / sigma
        final = hooks is not None and i == last and sigma_next == 0.0
        x = ddim_step(x, eps, sigma, hooks.diffstyler_final_sigma() if final else sigma_next)
        if hooks is not None:
            x = hooks.diffstyler_post_step(x, sigma_next)
        if final:
            x = hooks.diffstyler_final(x, hooks.diffstyler_final_sigma())
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    return x


def ddim_sampler() -> comfy.samplers.KSAMPLER:
    return comfy.samplers.KSAMPLER(sample_diffstyler_ddim)
