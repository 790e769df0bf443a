"""mergeplug's shipped reference models (``checkpoints/<name>/``) and offline datasets (``data/*.npz``, sources and
licences in ``data/SOURCES.md``). Files only: read them through ``importlib.resources.files("mergeplug_assets")``
(mergeplug does so in ``mergeplug._assets``)."""

__version__ = "0.1.0"
