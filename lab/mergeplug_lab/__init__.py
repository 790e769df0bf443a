"""mergeplug's lab: what builds and measures the product without being part of it.

* :mod:`mergeplug_lab.train`: reference-model training (``mergeplug-train``).
* :mod:`mergeplug_lab.sbt`: the compact (sparse binary) time-series Transformer (``mergeplug-sbt``).
* :mod:`mergeplug_lab.bench` (``mergeplug-bench``), :mod:`mergeplug_lab.bench_families`,
  :mod:`mergeplug_lab.bench_overhead`, :mod:`mergeplug_lab.bench_sampling`: the benchmarks.

It sits on top of the library (``mergeplug``, with its ``eval`` extra); the library never imports it.
"""
