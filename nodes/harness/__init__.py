"""In-process ComfyUI harness for the tests, benches and the headless runner (imports comfy lazily)."""
