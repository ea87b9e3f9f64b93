"""The Injector's data: its typed settings (the one place each default lives), a run's plan and a call's plan.

A run (``RunPlan``) is what a DiffStyler guider activates for one sampling; a call (``CallPlan``) is the row plan of
the UNet call in progress, built by the wrapper from ``nodes/core/rows.py``'s layout. ``PatchState`` is shared by
every patch one Injector installed; ``run``/``call`` are set only while sampling, so patches left on the model do
nothing outside a run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from ...core.rows import Group, LoraLayout, Source, Span

QK_BLENDS = ("adaptive", "replace")
FUSIONS = ("noise", "feature")
CONTENT_ROWS = ("per style", "shared")
BASE_INJECTIONS = ("all steps", "style windows")


@dataclass(frozen=True)
class InjectorSettings:
    """The Cross-LoRA Attention Injector's inputs; the defaults are the released pipeline's (design Sec. 5)."""

    feature_injection_end: float = 0.6  # ResBlock injection on the first 30 of 50 steps
    qk_injection_end: float = 0.5  # Q/K injection on the first 25 of 50 steps
    qk_blend: str = "adaptive"  # r = min(1, 2t/1000); "replace": r = 1
    lora_in_injected_attention: bool = False  # released: the LoRA is bypassed in the Q/K-injected attn1 layers
    fusion: str = "noise"  # "feature": our option, one shared cond/uncond pair
    content_rows: str = "per style"  # "shared": our option, one LoRA-free content row for every style
    base_injection: str = "all steps"  # model background: the base branch injects on every step (released)
    feature_blocks: str = "auto"  # the family default (UNet: output_blocks.4.0; Flux: the last double block)
    qk_blocks: str = "auto"  # the family's default Q/K blocks (UNet: decoder 4..11; Flux: the second half's singles)

    def __post_init__(self):
        for name, value, options in (
            ("qk_blend", self.qk_blend, QK_BLENDS),
            ("fusion", self.fusion, FUSIONS),
            ("content_rows", self.content_rows, CONTENT_ROWS),
            ("base_injection", self.base_injection, BASE_INJECTIONS),
        ):
            if value not in options:
                raise ValueError(f"{name}: expected one of {list(options)}, got {value!r}")
        for name in ("feature_injection_end", "qk_injection_end"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a fraction of the steps in [0, 1], got {v}")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "lora_in_injected_attention", bool(self.lora_in_injected_attention))
        for name in ("feature_blocks", "qk_blocks"):
            object.__setattr__(self, name, str(getattr(self, name)).strip() or "auto")

    @property
    def style_windows(self) -> tuple[float, float]:
        """(ResBlock end, Q/K end) of a style branch, as step fractions."""
        return self.feature_injection_end, self.qk_injection_end

    @property
    def base_windows(self) -> tuple[float, float]:
        """The base branch's windows (model background): every step (released) or the style windows."""
        return (1.0, 1.0) if self.base_injection == "all steps" else self.style_windows

    @property
    def per_style_content(self) -> bool:
        return self.content_rows == "per style"

    @property
    def feature_fusion(self) -> bool:
        return self.fusion == "feature"


DEFAULTS = InjectorSettings()
SHARED_SOURCE = Source.SHARED
WRAPPER_KEY = "diffstyler"  # the key of the Injector's wrappers (ComfyUI's add_wrapper_with_key)


@dataclass
class CallPlan:
    """Row roles of the UNet call in progress (rows = batch rows after the content rows were added)."""

    lora_rows: dict[int, torch.Tensor]  # style index -> row indices that get that style's LoRA
    lora_ranges: dict = field(default_factory=dict)  # style -> (start, stop) when its rows are contiguous
    lora_layout: LoraLayout | None = None  # every style's rows contiguous and no row fused: the layers' fast path
    lora_in_injected_attention: bool = True
    res_rows: torch.Tensor | None = None  # rows whose ResBlock residual is replaced ...
    res_src: torch.Tensor | None = None  # ... by these (content) rows
    qk_rows: torch.Tensor | None = None
    qk_src: torch.Tensor | None = None
    res_group: Group | None = None  # injection in place on one strided view (see rows.Group)
    qk_group: Group | None = None
    qk_ratio: float = 1.0
    res_cached: torch.Tensor | None = None  # the content residual [B, ...] from the feature cache (instead of res_src)
    qk_cached: dict | None = None  # (block, transformer index) -> (q, k) [B, ...] from the feature cache
    res_batch_index: torch.Tensor | None = None  # feature cache: for each injected row, its batch item in the cache
    qk_batch_index: torch.Tensor | None = None
    res_span: Span | None = None  # feature cache: injection in place on views (see rows.Span)
    qk_span: Span | None = None
    fused_rows: torch.Tensor | None = None  # feature-fusion mode: rows shared by every style
    fused_batch_index: torch.Tensor | None = None
    fused_uncond: list | None = None
    fused_role_index: torch.Tensor | None = None  # per fused row: 0 cond, 1 uncond
    fused_weights: list | None = None  # per style, then background: [B,1,h,w]
    fused_contexts: list | None = None  # per style, then background: (cond context, uncond context)
    fused_latent_hw: tuple | None = None
    fused_token_cache: dict = field(default_factory=dict)  # the run's cache for this call's fused row layout
    # per-source content cache (style_cache): (start, m, b, features) per run of m chunks of b rows fed by a source
    # whose features come from the store (res: the residual [b, ...]; qk: (block, transformer index) -> (q, k))
    res_stored: list = field(default_factory=list)
    qk_stored: list = field(default_factory=list)
    # (start, b, sink) per content chunk whose features are recorded: rows [start, start + b) into sink (a dict)
    res_record: list = field(default_factory=list)
    qk_record: list = field(default_factory=list)


@dataclass
class RunPlan:
    """What a DiffStyler guider activates for one sampling run (design Sec. 5).

    A *branch* is a style (its index) or the base model (``len(styles)``); each branch that receives content
    features reads them from a content row, its *source* (``nodes/core/rows.py``).
    """

    roles: list[tuple[int, bool]]  # cond index -> (branch index, is_uncond); Branch.NONE = no LoRA, no injection
    branch_source: dict[int, int]  # injected branch -> its content row's source (style index or Source.SHARED)
    branch_windows: dict[int, tuple[float, float]]  # injected branch -> (ResBlock end, Q/K end) as step fractions
    lora_branch_to_style: dict[int, int]  # branch -> style index whose deltas apply
    sample_sigmas: torch.Tensor
    content_latent_at: object  # callable(step index in sample_sigmas) -> the content row's input, model space
    content_conditioning: dict  # name -> ComfyUI CONDRegular for the content rows
    qk_blend: str
    lora_in_injected_attention: bool
    model_sampling: object
    feature_cache: object = None
    fused_branch: int | None = None
    fused_weights: list | None = None
    fused_contexts: list | None = None
    latent_hw: tuple | None = None
    fused_kv_cache: dict = field(default_factory=dict)  # feature fusion: region prompts' K/V per layer
    timesteps: list | None = None  # model timestep of each sample sigma (computed once per run: no sync per call)
    index_cache: dict = field(default_factory=dict)  # row lists -> index tensors on the device, reused every step
    fused_token_caches: dict = field(default_factory=dict)  # fused row layout -> masks per grid, region K/V per row
    # the guider's handler for calc_cond_batch calls while the run is active: (executor, model, conds, x, t, options)
    cond_batch_handler: object = None
    source_cache: object = None  # style_cache.RunCache: per-source content features kept on the inversion

    time_scale: float = 1.0  # the Q/K blend's t = time_scale * model timestep (Flux: 1000, its timestep is sigma)

    def timestep_at(self, step: int) -> float:
        """The Q/K blend's ``t`` (0..1000) at sampling step ``step``."""
        if self.timesteps is None:
            sig = self.sample_sigmas
            pos = sig > 0
            ts = torch.zeros(sig.shape, dtype=torch.float64)
            if bool(pos.any()):
                device = self.model_sampling.sigmas.device if hasattr(self.model_sampling, "sigmas") else sig.device
                ts[pos] = self.model_sampling.timestep(sig[pos].to(device)).double().cpu() * self.time_scale
            self.timesteps = ts.tolist()
        return self.timesteps[step]

    def index(self, rows: list[int], device) -> torch.Tensor:
        key = (tuple(rows), device)
        if key not in self.index_cache:
            self.index_cache[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return self.index_cache[key]


class PatchState:
    """Shared by every patch one Injector installed; ``run``/``call`` are set only while sampling."""

    def __init__(self, family, n_styles: int, style_ids: tuple[str, ...], settings: InjectorSettings):
        self.family = family  # the model family (arch.ModelFamily) the patches were made for
        self.n_styles = n_styles
        self.style_ids = style_ids
        self.settings = settings
        self.styles: list | None = None  # the Style objects, for samplers whose styles input is not connected
        self.lora_styles: set[int] = set(range(n_styles))  # styles with LoRA layers patched (others: plain model)
        self.run: RunPlan | None = None
        self._calls = threading.local()  # ComfyUI may run apply_model in threads (one per device): a call each
        self.deltas_bytes = 0
        self.replace_slots: list[tuple[str, tuple]] = []  # ("attn1"/"attn2", (block, id, transformer index))
        self.style_models: dict[int, PatchState] = {}  # MODEL styles: style index -> the state of its patched clone
        self.model_style_of: int | None = None  # on a MODEL style's clone: the style index it holds
        self.style_deltas: list[dict] = []  # per style: module path -> LayerDelta (what its LoRA adds)
        self.lora_digests: dict[int, str] = {}  # style -> digest of its deltas (style_cache.lora_digest)
        self.wrapped_patches: dict = {}  # module path -> another node's object patch that our view wraps

    @property
    def call(self) -> CallPlan | None:
        """The plan of the ``apply_model`` call running in this thread (None outside one)."""
        return getattr(self._calls, "plan", None)

    @call.setter
    def call(self, plan: CallPlan | None) -> None:
        self._calls.plan = plan

    def active_call(self) -> CallPlan | None:
        """The call plan while a run is active, else None (what every patch checks first)."""
        return self.call if self.run is not None else None

    def on_model_patcher_clone(self):
        return self  # clones of the patched MODEL share the patches, so they share the state
