"""DiffStyler nodes. Importing this package imports nothing from ComfyUI (see ``extension``)."""
