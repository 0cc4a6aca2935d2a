"""Benchmarks of ilm against real peers, measured in the same run.

``make bench`` (``python -m bench``) runs every benchmark, writes one JSON file
per benchmark to ``bench/results/`` and rewrites ``BENCHMARKS.md`` from all
results present. Each benchmark module exposes ``NAME``, ``TITLE``,
``run(ctx) -> dict`` and ``render(result) -> str`` (a Markdown section).

The machine these run on is shared and noisy, so every figure of ilm is
reported next to a baseline measured in the same round, and the ratio of the
two is what the targets are checked against.

Modules:
  harness   start/stop the peers (Orthanc, pynetdicom storescp, ilm serve,
            PostgreSQL) on 127.0.0.1, by pid; timed subprocesses; machine facts
  data      the 1,000 CT instances (512x512, 16-bit, explicit VR LE), cached
  cstore    C-STORE ingest by dcmtk storescu: ilm vs Orthanc vs storescp
  stow      STOW-RS ingest, 1 and 4 clients: ilm vs Orthanc POST /instances
  importing ilm import of a folder vs cp -r
  catalog   1M catalog-only studies on SQLite and PostgreSQL vs raw executemany
  report    BENCHMARKS.md from the results
"""
