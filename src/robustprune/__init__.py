"""robustprune: make neural networks small and adversarially robust at once, and measure it honestly.

Layers (arrows go down only): study -> methods -> train / sparsity / objectives -> attacks / models / data.
See docs/contracts.md for the interfaces between them.
"""

from robustprune.errors import RobustPruneError

from robustprune._version import __version__

__all__ = ["RobustPruneError", "__version__", "export", "import_model", "prune"]


def prune(*args, **kwargs):  # noqa: D103  (imported lazily: `import robustprune` stays light)
    from robustprune.api import prune as _prune

    return _prune(*args, **kwargs)


prune.__doc__ = "Prune any nn.Module with any registered method; see :func:`robustprune.api.prune`."


def export(*args, **kwargs):  # noqa: D103  (imported lazily, as prune)
    from robustprune.deploy import export as _export

    return _export(*args, **kwargs)


export.__doc__ = ("Export a model to onnx / torchscript / exported-program, verified by the format's runtime; see "
                  ":func:`robustprune.deploy.export.export`.")


def import_model(*args, **kwargs):  # noqa: D103  (imported lazily, as prune)
    from robustprune.checkpoint_import import import_model as _import_model

    return _import_model(*args, **kwargs)


import_model.__doc__ = ("Import weights saved by other code (.pt/.pth/.bin/.safetensors, never unpickled) as a checked "
                        "robustprune checkpoint; see :func:`robustprune.checkpoint_import.import_model`.")
