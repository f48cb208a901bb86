"""Reading a saved model back. Introduced in chapter 8, for the capstone's kept weights.

A checkpoint is a dict of plain values and tensors written by ``torch.save`` (``memorylib train``,
``memorylib sweep``, ``experiments/needle.py``): the registry name of the model and its keyword
arguments, the task it was trained on, the seed, the ``state_dict`` and the training recipe. It is
read only with ``torch.load(..., weights_only=True)``, which cannot run code from the file.
"""

from __future__ import annotations


def load_model(path, **model_kwargs):
    """``(model, checkpoint)``: the model named in the checkpoint at ``path``, built with its
    keyword arguments (``model_kwargs`` override them), its weights loaded, in eval mode.
    A file that is missing, not a checkpoint, or whose weights do not fit raises a ``ValueError``
    that names the file and says why."""
    from .cli import _build, _load_weights, read_checkpoint

    ckpt = read_checkpoint(path)
    name, kwargs = ckpt["model"], {**ckpt["model_kwargs"], **model_kwargs}
    model = _build("model", name, kwargs)
    _load_weights(model, ckpt["state_dict"], path, name, kwargs)
    return model.eval(), ckpt
