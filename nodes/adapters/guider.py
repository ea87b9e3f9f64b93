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

import comfy.model_patcher
import comfy.patcher_extension
import comfy.samplers
import torch

from ..core.inversion import InversionResult
from ..core.masks import MASK_MODES, is_empty, resize_mask_to_latent, to_patch_grid
from ..core.phases import StylePhases, fuse_phase, step_styles
from ..core.rows import Branch, Source
from ..core.schedule import find_sigma_index
from ..core.styles import Style
from . import inversion as inversion_adapter
from . import style_cache, text_lengths
from .areas import check_areas
from .injector.attention import overridden_replaces
from .injector.install import state_of
from .injector.state import RunPlan
from .model_styles import ModelStyles

logger = logging.getLogger(__name__)

BACKGROUNDS = ("exact", "model")
FUSED_BRANCH = Branch.FUSED


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
        state = state_of(model_patcher)
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
        self._slice = (0, inversion.steps)  # the part of the inversion's schedule this guider samples
        self._model_styles: ModelStyles | None = None  # the MODEL styles of the run in progress

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
                m = to_patch_grid(m, self.state.family.patch)  # Flux: the token grid (2x2 cells a token)
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
        timed = [i for i in self.active if self.styles[i].timed]
        if timed and self.state.settings.feature_fusion:
            i = timed[0]
            raise ValueError(
                f"styles: style {i + 1} ({self.styles[i].name}) is active on part of the sampling only "
                f"({self.styles[i].start_percent} to {self.styles[i].end_percent}), which feature fusion does not "
                "support: set the Injector's fusion to 'noise', or the style's range to 0 - 1"
            )
        ms = self.model_patcher.get_model_object("model_sampling")
        bounds = {}
        for i in self.active:
            st = self.styles[i]
            bounds[i] = (float(ms.percent_to_sigma(st.start_percent)), float(ms.percent_to_sigma(st.end_percent)))
        steps = step_styles(bounds, self.inversion.sigmas.tolist())
        shape = (b, 1, h, w)
        self.phases = StylePhases(dict(zip(self.active, masks)), steps, self.background == "exact", shape)
        self.step_styles = steps
        every = self.phases.phase(tuple(self.active))  # feature fusion: every style, one pair
        self.weights, self.bg_weight = every.weights, every.content if every.base is None else every.base
        # the region whose latent the run returns as styled (exact background): every style active at any step
        self.final_inside = self.phases.final_inside()

    def _device_phase(self, step: int, x):
        """The phase of sampling step ``step`` on ``x``'s device and dtype (kept per run)."""
        phase = self.phases.at(step)
        key = (phase.styles, id(phase), x.device, x.dtype)
        if key not in self._dev_phases:
            self._dev_phases[key] = phase.to(x.device, x.dtype)
        return self._dev_phases[key]

    def _step_of(self, timestep) -> int:
        return find_sigma_index(self.inversion.sigmas, timestep.flatten()[0] if torch.is_tensor(timestep) else timestep)

    def _activate(self, x, timestep, model_options):
        inv = self.inversion
        content = self.conds["content"][0]
        cond_obj = comfy.samplers.get_area_and_mult(content, x, timestep)
        # MODEL styles run in an extra UNet call of their own model each; the base call holds every other branch
        self._model_styles = ModelStyles(self.model_patcher, self.state, self.active)
        branches = [i for i in self.active if i not in self._model_styles.patchers]
        base_branch = len(self.styles)
        self._fused = self.state.settings.feature_fusion and bool(self.active)
        if self._fused:
            branches = [FUSED_BRANCH]
        elif self.background == "model" or self.phases.any_base():
            branches.append(base_branch)  # the model background, or the regions of styles that have ended
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
        check_areas(self.original_conds, self.styles, tuple(x.shape[-2:]))
        style_windows = s.style_windows
        base_windows = s.base_windows  # released: every step for the base branch; "style windows" is our option
        per_style = s.per_style_content
        lora_styles = self.state.lora_styles
        sources, windows = {}, {}
        for br in branches:
            if br == base_branch:
                sources[br], windows[br] = Source.SHARED, base_windows
            elif br == FUSED_BRANCH:
                sources[br], windows[br] = Source.SHARED, style_windows
            else:
                sources[br] = br if (per_style and br in lora_styles) else Source.SHARED
                windows[br] = style_windows
        self._run = RunPlan(
            roles=roles,
            branch_source=sources,
            branch_windows=windows,
            lora_branch_to_style={br: br for br in branches if br != base_branch},
            sample_sigmas=inv.sigmas,
            content_latent_at=content_latent_at,
            content_conditioning=dict(cond_obj.conditioning),
            qk_blend=s.qk_blend,
            lora_in_injected_attention=s.lora_in_injected_attention,
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
        self._run.time_scale = self.state.family.time_scale
        if self.state.family.flow:
            _refuse_reference_latents(self.conds)
            text_lengths.check(self.conds, self.styles, roles, windows, base_branch)
        self._run.cond_batch_handler = self._cond_batch
        self.state.run = self._run
        self._model_styles.activate(
            self._uncond, inv.sigmas, content_latent_at, dict(cond_obj.conditioning), tuple(x.shape[-2:])
        )
        self._dev_phases = {}
        self._content_x0 = traj[-1]

    # ------------------------------------------------------------------ CFGGuider hooks
    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        if self._run is None:
            self._activate(x, timestep, model_options)
            self._check_replaces(model_options)
        if not self._conds_list and not self._model_styles.patchers:  # nothing to stylize: the content itself
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

    def _model_style_pair(self, i, batch, conds, x, timestep, model_options):
        """(cond, uncond) of MODEL style ``i`` for the same cond/uncond pair of entries as the base call."""
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
        return self._model_styles.pair(i, layout, x, timestep, model_options)

    def _cond_batch(self, executor, model, conds, x, timestep, model_options):
        """Every calc_cond_batch call of the run: the sampling function's ``[positive, negative]`` (``[positive,
        None]`` at cfg 1) and those of guidance hooks, each with its own model_options (PAG's or SAG's post-CFG
        function asking the model again, Skip Layer Guidance's calc_cond_batch function). Each entry gets what
        DiffStyler predicts for it: every branch evaluated and fused by mask. The run's positive (negative) stands
        for each branch's own cond (uncond) prompt; another conditioning replaces each branch's cond prompt. One
        UNet batch (``self._conds_list``'s layout) per cond/uncond pair of entries."""
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        step = self._step_of(timestep)
        phase = self._device_phase(step, x)
        live = set(phase.styles)  # the styles active at this step: no rows for the others
        base_branch = len(self.styles)
        skip_base = phase.base is None  # the exact background where no style has ended: no base rows
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
                if i is None or (branch < base_branch and branch not in live) or (branch == base_branch and skip_base):
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
            for i in self._model_styles.patchers:
                if i in live:
                    extra[i] = self._model_style_pair(i, batch, conds, x, timestep, model_options)
            cond_f, uncond_f = self._fused_pair(out, x, step, extra)
            for uncond, i in batch.items():
                results[i] = uncond_f if uncond else cond_f
        return results

    def _check_replaces(self, model_options):
        """Warn once per run when a node patched after the Injector turned DiffStyler's attention off."""
        lost = overridden_replaces(self.state, model_options)
        if not lost:
            return
        what = {
            "attn1": "self-attention Q/K injection",
            "attn2": "feature-fusion cross-attention",
            "dit": "Flux block injection",
        }
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
        phase = self._device_phase(step, x)
        content = self._content_x0.expand_as(x)
        base = len(self.styles)
        cond_f = fuse_phase(phase, cond_preds, cond_preds.get(base), content)
        uncond_f = fuse_phase(phase, uncond_preds, uncond_preds.get(base), content) if self._uncond else None
        return cond_f, uncond_f

    def diffstyler_initial_latent(self, x):
        """The sampler starts exactly on x_T of the inversion (model space); a later slice of the schedule (a second
        sampler after SplitSigmas) goes on from the latent it was given."""
        if self._slice[0] > 0:
            return x
        return self.inversion.trajectory[0].to(x.device, x.dtype)

    def diffstyler_final_sigma(self) -> float:
        """Where the last step goes instead of sigma 0: the released pipeline's last DDIM step ends at
        alphas_cumprod[0] (``set_alpha_to_one`` false), i.e. at the model's smallest sigma (design Sec. 5). A flow
        model (Flux) ends at sigma 0, as its Euler sampling does."""
        if self.state.family.flow:
            return 0.0
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
        return torch.where(self._device_phase(nxt - 1, x).inside, x, self._traj[nxt])

    def sample(
        self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None
    ):
        inv = self.inversion
        self._slice = inversion_adapter.check_inversion(inv, self.model_patcher, sigmas.cpu(), inv.content_latent.shape)
        if latent_image is not None and tuple(latent_image.shape) != tuple(inv.content_latent.shape):
            raise ValueError(
                f"latent_image: got shape {list(latent_image.shape)} but the inversion's content latent is "
                f"{list(inv.content_latent.shape)}: connect the inverted latent of the same DDIM Inversion"
            )
        if self._slice[0] > 0:  # a later slice: from the latent the previous sampler left (SplitSigmas)
            x_t = latent_image
        else:
            x_t = self.model_patcher.model.process_latent_out(inv.trajectory[0].clone())
        self._run = None
        try:
            out = super().sample(torch.zeros_like(x_t), x_t, sampler, sigmas, None, callback, disable_pbar, seed)
        finally:
            self.state.run = None
            self.state.call = None
            if self._model_styles is not None:
                self._model_styles.cleanup()
            self._model_styles = None
            self._run = None
        if self.background == "exact" and self._slice[1] == inv.steps:
            content = inv.content_latent.to(out.device, out.dtype)
            out = torch.where(self.final_inside.to(out.device), out, content)
        return out


def _refuse_reference_latents(conds: dict) -> None:
    """Flux Kontext's reference tokens (ReferenceLatent / FluxKontext conditioning) are not part of DiffStyler's
    Flux.1 method: ValueError naming the prompt that carries them."""
    for key, entries in conds.items():
        for entry in entries or []:
            if "ref_latents" in entry.get("model_conds", {}):
                raise ValueError(
                    f"{key}: this conditioning carries Kontext reference latents (ReferenceLatent / Flux Kontext "
                    "nodes); DiffStyler on Flux supports Flux.1 dev and schnell without reference tokens: remove the "
                    "reference latent from the prompt"
                )
