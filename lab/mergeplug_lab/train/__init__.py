"""Training of the reference models (Chronos-T5 / Bolt / Chronos-2 architectures, PatchTST, TimeSeriesTransformer):
``mergeplug-train``. Part of the lab (``mergeplug-lab``); the library never imports it."""
