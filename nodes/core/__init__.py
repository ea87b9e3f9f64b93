"""Pure torch/numpy building blocks of DiffStyler. Nothing in here imports ComfyUI."""
