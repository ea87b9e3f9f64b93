"""Train Style LoRA node (paper Sec. 3, "Style LoRA")."""

from __future__ import annotations

from ._api import io
from .adapters import lora_save, training
from .core import training as core


class DiffStylerTrainStyleLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffStylerTrainStyleLoRA",
            display_name="Train Style LoRA (DiffStyler)",
            category="DiffStyler/train",
            description=(
                "Trains a style LoRA from one style image (or a few) as DiffStyler does: LoRA on the UNet attention "
                "projections, rank 16, 200 steps, AdamW lr 2e-4, noise-prediction loss, frozen text encoder and a "
                "trigger prompt. On a Flux.1 MODEL (dev or schnell): LoRA on the double blocks' image-stream "
                "attention (img_attn.qkv, img_attn.proj) with the flow-matching loss. The input MODEL is not changed. "
                "Outputs the LoRA (core LORA_MODEL: connect Load LoRA Model, Save LoRA Weights or the Style LoRA "
                "Loader) and a loss curve; optionally saves it to models/loras so LoraLoader can load it."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The diffusion model to train the LoRA for (it is left unchanged): an SD1.x/SD2.x/SDXL "
                    "checkpoint's, or Flux.1 dev/schnell (Load Diffusion Model). Flux.2 and other DiTs are refused.",
                ),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="The checkpoint's text encoder; frozen, it encodes the prompt once. Flux: the "
                    "DualCLIPLoader's (t5xxl + clip_l, type flux). Not needed when 'conditioning' is connected.",
                ),
                io.Vae.Input(
                    "vae",
                    tooltip="The checkpoint's VAE, used to encode the style image to a latent. Flux: ae.safetensors.",
                ),
                io.Image.Input(
                    "image",
                    tooltip="The style image (one, as in the paper, or a few: each step uses the next one). "
                    "Resized so its short side is 'resolution'.",
                ),
                io.String.Input(
                    "prompt",
                    default="painting of <sss>",
                    multiline=False,
                    tooltip="Training prompt with the trigger string; use the same trigger when sampling. Encoded with "
                    "'clip' unless 'conditioning' is connected (then it is only written into the file's metadata).",
                ),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Training steps. The paper uses 200."),
                io.Float.Input(
                    "learning_rate",
                    default=2e-4,
                    min=1e-7,
                    max=1.0,
                    step=1e-5,
                    tooltip="AdamW learning rate (weight decay 1e-2). The paper uses 2e-4.",
                ),
                io.Int.Input("rank", default=16, min=1, max=256, tooltip="LoRA rank (alpha = rank). Paper: 16."),
                io.Combo.Input(
                    "targets",
                    options=list(core.TARGET_CHOICES),
                    default="attention",
                    tooltip="attention: to_q, to_k, to_v, to_out.0 of every self- and cross-attention (the paper). "
                    "all_linear: every Linear and 1x1 conv layer of the UNet. Flux: attention = the double blocks' "
                    "image-stream img_attn.qkv and img_attn.proj; all_linear = every Linear of the double and single "
                    "blocks.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=False,
                    tooltip="Seeds the LoRA init, the noise and the timesteps (Flux: the sigmas, drawn through the "
                    "MODEL's shift); the same seed gives the same LoRA.",
                ),
                io.Int.Input(
                    "resolution",
                    default=512,
                    min=64,
                    max=4096,
                    step=8,
                    tooltip="Short side of the training image in pixels (aspect kept, sides multiples of 8). "
                    "512 for SD1.5; Flux trains at 512 to 1024.",
                ),
                io.String.Input(
                    "save_name",
                    default="",
                    optional=True,
                    tooltip="Also save as models/loras/<save_name>.safetensors (replaces a file of that name). "
                    "Empty: don't save.",
                ),
                io.Conditioning.Input(
                    "conditioning",
                    optional=True,
                    tooltip="The training prompt as CONDITIONING, used instead of encoding 'prompt' with 'clip'. "
                    "Flux: CLIP Text Encode (Flux) or FluxGuidance output; the guidance it carries is the training's "
                    "(dev; schnell ignores it; none: ComfyUI's Flux default 3.5).",
                ),
            ],
            outputs=[
                io.LoraModel.Output(
                    "lora",
                    display_name="lora",
                    tooltip="The trained LoRA as a dict of kohya-style tensors (lora_unet_*.lora_down/lora_up/alpha).",
                ),
                io.Image.Output("loss_curve", display_name="loss_curve", tooltip="Loss per step, moving average."),
            ],
        )

    @classmethod
    def validate_inputs(cls, save_name: str = "") -> bool | str:
        # Only what ComfyUI cannot check: an input named here loses ComfyUI's own min/max/combo check.
        if isinstance(save_name, str):
            try:
                core.check_save_name(save_name)
            except ValueError as e:
                return str(e)
        return True

    @classmethod
    def execute(
        cls,
        model,
        clip=None,  # optional: not needed when 'conditioning' is connected (the rest keep the schema's defaults)
        vae=None,
        image=None,
        prompt: str = "painting of <sss>",
        steps: int = 200,
        learning_rate: float = 2e-4,
        rank: int = 16,
        targets: str = "attention",
        seed: int = 0,
        resolution: int = 512,
        save_name: str = "",
        conditioning=None,
    ) -> io.NodeOutput:
        cfg = core.TrainingConfig(
            steps=int(steps),
            learning_rate=float(learning_rate),
            rank=int(rank),
            targets=targets,
            seed=int(seed),
            resolution=int(resolution),
        )
        stem = core.check_save_name(save_name or "")
        result = training.train_style_lora(model, clip, vae, image, prompt, cfg, conditioning=conditioning)
        lora = result.state_dict()
        if stem:
            metadata = lora_save.lora_metadata(cfg, prompt, result.targets, result.family)
            lora_save.save_lora_file(lora, stem, metadata)
        title = f"{'Flux ' if result.family == 'flux' else ''}style LoRA loss, {cfg.targets}, rank {cfg.rank}"
        curve = core.plot_loss_curve(result.losses, title=title)
        return io.NodeOutput(lora, curve)


NODES = [DiffStylerTrainStyleLoRA]
