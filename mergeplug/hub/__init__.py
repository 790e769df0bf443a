"""Save and load merged models the way the Hugging Face ecosystem expects, with generated model cards.

A mergeplug directory (local, or a Hugging Face Hub repository) holds:

* ``mergeplug_config.json``: the format version, the mergeplug version, the model family, how to load the
  base model (``loader``: ``chronos`` for ``BaseChronosPipeline`` or ``transformers`` with the model class),
  ``base_model`` (a hub id or path, if known), whether the weights are in the directory, and every merge
  setting (``merge``: the keyword arguments of :func:`mergeplug.apply`, ``null`` when unmerged);
* the weights and ``config.json`` as ``save_pretrained`` writes them (``model.safetensors``), unless the
  directory only *references* its base model (``save_pretrained(..., weights=False)`` with ``base_model``):
  then loading fetches the base model and applies the settings, like a PEFT adapter without adapter weights;
* ``mergeplug_packed.safetensors`` if the model is binarized (:func:`mergeplug.binarize`; the config's
  ``binarization`` field holds its settings): the sparse binary layers packed by :func:`mergeplug.save_packed`
  (``model.safetensors`` keeps the float weights they were made from, for plain loaders); :func:`from_pretrained`
  loads it on top with :func:`mergeplug.load_packed`, so outputs are identical. With
  ``save_pretrained(..., float_weights=False)`` the directory holds no ``model.safetensors`` at all, only
  ``config.json`` and the packed file (the storage the packed format promises): :func:`from_pretrained` builds
  the model from ``config.json`` and the packed file alone;
* ``README.md``: a model card generated with ``huggingface_hub``'s ``ModelCard`` / ``ModelCardData`` (YAML
  metadata, how to use it, the settings, the cost counted by :mod:`mergeplug.cost` and, given a
  ``mergeplug-eval`` results directory, the measured speed-up and accuracy tables). It carries
  :data:`CARD_MARKER`; a ``README.md`` without it is the user's, and :func:`save_pretrained` keeps it.

The weights are always saved from the unpatched classes (the patch is removed for the save and re-applied),
so the saved model loads with plain ``transformers`` / ``chronos`` too. A save is built in a temporary directory
next to the target and moved into place only when complete: a failed save leaves a previous one intact.

The package's modules, each importing only those listed before it: :mod:`mergeplug.hub.format` (the on-disk
format: ``mergeplug_config.json``, file names, validation), :mod:`mergeplug.hub.load` (:func:`from_pretrained`),
:mod:`mergeplug.hub.card` (:func:`model_card`) and :mod:`mergeplug.hub.save` (:func:`save_pretrained`,
:func:`push_to_hub`).
"""

from __future__ import annotations

from .card import CARD_MARKER, CARD_NAME, model_card
from .format import (
    CONFIG_NAME,
    FORMAT_VERSION,
    PACKED_NAME,
    WEIGHT_PATTERNS,
    is_packed_only,
    read_config,
    saved_packed_only,
    write_config,
)
from .load import from_pretrained, load_binary_layers
from .save import push_to_hub, save_pretrained

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "save_pretrained",
    "from_pretrained",
    "write_config",
    "read_config",
    "model_card",
    "push_to_hub",
    "PACKED_NAME",
    "CARD_NAME",
    "CARD_MARKER",
    "WEIGHT_PATTERNS",
    "is_packed_only",
    "saved_packed_only",
    "load_binary_layers",
]
