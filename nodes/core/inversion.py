"""Data held by a DDIM inversion and the checks that refuse mismatched reuse (no ComfyUI)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .schedule import find_sigma_index


@dataclass(frozen=True)
class InversionFingerprint:
    """What an inversion depends on: the model, the step count (and thus sigmas) and the latent shape."""

    model: str
    steps: int
    latent_shape: tuple[int, ...]
    sigmas_digest: str

    def mismatch(self, other: InversionFingerprint) -> str | None:
        """A sentence naming the first field that differs from ``other`` (the run's own), or None."""
        if self.model != other.model:
            return (
                "the inversion was made with another model (or another set of merged LoRAs/patches) than the one "
                "sampling now: feed DDIM Inversion the same MODEL that goes into the sampler"
            )
        if self.steps != other.steps:
            return (
                f"the inversion was made with {self.steps} steps but the sampler uses {other.steps}: "
                f"set DDIM Inversion steps to {other.steps} (or sample with {self.steps})"
            )
        if self.sigmas_digest != other.sigmas_digest:
            return (
                "the inversion's sigmas differ from the sampler's: sample on the ddim_uniform schedule the inversion "
                "used (connect the inversion's sigmas, or use the Masked Feature Fusion Sampler)"
            )
        if tuple(self.latent_shape) != tuple(other.latent_shape):
            return (
                f"the inversion was made for a latent of shape {list(self.latent_shape)} but the sampler got "
                f"{list(other.latent_shape)}: invert the same content latent that you sample"
            )
        return None


def sigma_slice(schedule: torch.Tensor, sigmas: torch.Tensor, rtol: float = 1e-4) -> tuple[int, int]:
    """``(first, last)``: ``sigmas`` is ``schedule[first : last + 1]`` (a contiguous slice of the inversion's sigmas,
    as SplitSigmas / SplitSigmasDenoise make, equal up to ``rtol``); ValueError naming the fix otherwise."""
    full = [float(v) for v in schedule.flatten().tolist()]
    part = [float(v) for v in sigmas.flatten().tolist()]
    first = find_sigma_index(schedule, part[0]) if part else -1
    last = first + len(part) - 1
    ok = first >= 0 and last < len(full)
    ok = ok and all(abs(a - b) <= rtol * max(abs(b), 1e-6) + 1e-8 for a, b in zip(part, full[first : last + 1]))
    if not ok or len(part) < 2:
        head = ", ".join(f"{v:.4g}" for v in part[:4])
        raise ValueError(
            f"sigmas: the sampler's sigmas ({len(part)} values: {head}{', ...' if len(part) > 4 else ''}) are not "
            f"a slice of the inversion's schedule ({len(full) - 1} ddim_uniform steps): sample with the inversion's "
            "sigmas, or with a part of them cut by SplitSigmas / SplitSigmasDenoise (connect DiffStyler Inversion "
            "Sigmas to the split node)"
        )
    return first, last


def digest_sigmas(sigmas: torch.Tensor) -> str:
    """A short, stable text digest of a sigma schedule (rounded to 6 significant digits)."""
    return ",".join(f"{s:.6g}" for s in sigmas.detach().cpu().flatten().tolist())


@dataclass
class FeatureCache:
    """Content-branch features recorded during inversion (design Sec. 4, "content-feature cache").

    Keys are *sampling* step indices (0 = first, noisiest step). ``res[j]``: the residual ``h`` of the
    injected ResBlock ``[B,C,H,W]``; ``qk[j][(block, transformer_index)] = (q, k)``, each ``[B,N,D]``.
    Only the steps inside the windows it was recorded for are present.
    """

    dtype: torch.dtype
    feature_end: float
    qk_end: float
    res: dict = field(default_factory=dict)
    qk: dict = field(default_factory=dict)

    def nbytes(self) -> int:
        n = sum(t.numel() * t.element_size() for t in self.res.values())
        for layers in self.qk.values():
            n += sum(q.numel() * q.element_size() + k.numel() * k.element_size() for q, k in layers.values())
        return n

    def steps_recorded(self) -> tuple[int, int]:
        return len(self.res), len(self.qk)


@dataclass
class InversionResult:
    """A DDIM inversion of a content latent (paper Sec. 3.1).

    ``sigmas``: the sampling schedule ``[n+1]``, descending, ending in 0.
    ``trajectory``: ``[n+1, B, C, h, w]`` model-space latents (k-diffusion scaling, ``x = z / sqrt(alpha)``),
    ``trajectory[i]`` is the inverted latent at ``sigmas[i]`` (only the sampling timesteps are kept, whatever
    grid the inversion ran on); ``trajectory[-1]`` is the clean content latent and ``trajectory[0]`` is where
    sampling starts (the inverted latent at the first sampling timestep).
    ``grid``: the inversion grid's name (``fine`` = the released t = 1, 2, ..., see ``inversion.GRIDS``);
    ``unet_rows``: UNet rows the inversion evaluated per batch item.
    ``content_latent``: the clean latent as given (VAE space, ``[B,C,h,w]``).
    ``conditioning``: the ComfyUI CONDITIONING used for the content branch (empty prompt by default).
    ``source_cache``: the per-source content-feature cache the sampler fills and reads (``style_cache.ContentCache``,
    set by the DDIM Inversion node; None: off). It lives and dies with this object.
    """

    sigmas: torch.Tensor
    trajectory: torch.Tensor
    content_latent: torch.Tensor
    fingerprint: InversionFingerprint
    conditioning: list = field(default_factory=list)
    feature_cache: FeatureCache | None = None
    grid: str = "fine"
    unet_rows: int = 0
    source_cache: object = None

    @property
    def steps(self) -> int:
        return int(self.sigmas.shape[0]) - 1

    def checked_index(self, sigma: float | torch.Tensor) -> int:
        """Index of ``sigma`` in ``sigmas``/``trajectory``; ValueError when sigma is not on the schedule."""
        i = find_sigma_index(self.sigmas, sigma)
        if i < 0:
            raise ValueError(
                f"sigma {float(sigma):.6g} is not on the inversion's schedule ({self.steps} ddim_uniform steps): "
                "sample with the sigmas the inversion used"
            )
        return i

    def content_index(self, sigma: float | torch.Tensor) -> int:
        """Trajectory index of the content row's input at sampling sigma ``sigma`` (see ``content_input_at``)."""
        return self.content_step_index(self.checked_index(sigma))

    def content_step_index(self, step: int) -> int:
        """``content_index`` of the sigma at index ``step`` of ``sigmas``: the same index (design Sec. 5: at
        sampling timestep t the content row gets the inverted latent at that same t)."""
        return min(step, self.trajectory.shape[0] - 1)

    def latent_at(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The trajectory latent ``[B,C,h,w]`` at ``sigma``; ValueError when sigma is not on the schedule."""
        return self.trajectory[self.checked_index(sigma)]

    def content_input_at(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The content row's input at sampling sigma ``sigma``: the inverted latent at that sigma (model space)."""
        return self.trajectory[self.content_index(sigma)]

    def nbytes(self) -> int:
        return self.trajectory.numel() * self.trajectory.element_size()
