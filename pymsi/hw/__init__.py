"""Hardware models, driven only through registers and memory, as drivers do."""
