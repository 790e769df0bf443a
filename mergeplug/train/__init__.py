"""Training of the reference models (Chronos-T5 / Bolt architectures, PatchTST, TimeSeriesTransformer).

Needs the ``train`` extra (``pip install 'mergeplug[train]'``); the library never imports this package.
"""

from .._cli import require_extra

require_extra("train", "mergeplug.train")
