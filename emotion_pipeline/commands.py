"""The console scripts' entry points (pyproject.toml, [project.scripts]) for commands whose module imports torch.

A console script imports its function's module before anything of ours runs, and emotion_pipeline.predict
imports torch and transformers at its top (seconds). Pointing the script here instead, a module that imports
nothing heavy, lets import_for_command handle Ctrl-C during those seconds too (one line, no traceback).
"""

from __future__ import annotations

from emotion_pipeline.errors import import_for_command


def predict() -> None:
    """emotion-predict (emotion_pipeline.predict.main)."""
    import_for_command("emotion-predict", "emotion_pipeline.predict")
    from emotion_pipeline.predict import main

    main()
