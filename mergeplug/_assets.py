"""Where the shipped reference models and datasets live: the separate ``mergeplug-assets`` distribution (this
repository's ``assets/`` folder, installed by ``make install``), so the library wheel stays small.

Every reader (the harness' datasets and ``mergeplug:<name>`` models, ``mergeplug-train export``, the compact
Transformer's data, the tests) resolves the files here, through ``importlib.resources``; without the package they
get one line naming the fix. Imports nothing of mergeplug (the library never needs these files)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE = "mergeplug_assets"
MISSING = (
    "the shipped reference models and datasets are in the mergeplug-assets package (this repository's assets/ "
    "folder): pip install ./assets"
)


class AssetsMissingError(FileNotFoundError):
    """``mergeplug_assets`` is not installed (the message says how to install it). A FileNotFoundError, so every
    command line prints it as its one-line error."""


def assets_root() -> Path:
    """The directory of the installed ``mergeplug_assets`` package (``assets/mergeplug_assets`` in a checkout
    installed with ``make install``)."""
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise AssetsMissingError(MISSING) from None
    return Path(str(root))


def data_file(filename: str) -> Path:
    """A shipped dataset file (``mergeplug_assets/data/<filename>``)."""
    return assets_root() / "data" / filename


def checkpoint_dir(name: str = "") -> Path:
    """The shipped reference checkpoints (``mergeplug_assets/checkpoints/<name>``; no name: their parent)."""
    return assets_root() / "checkpoints" / name
