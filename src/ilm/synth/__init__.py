"""Synthetic DICOM archives for the demo, the tests and the benchmarks.

- :mod:`ilm.synth.plan` (pure): a deterministic plan of patients, studies,
  series and access histories from a :class:`~ilm.synth.plan.SynthConfig`.
- :mod:`ilm.synth.files`: writes a plan as real DICOM Part 10 files.
- :mod:`ilm.synth.rows`: writes a plan straight into the catalog (no files),
  for scale tests of a million studies and more.
"""

from ilm.synth.plan import (
    PlanTotals,
    SeriesSpec,
    StudySpec,
    SynthConfig,
    generate,
    generate_blocks,
    totals,
)

__all__ = ["SynthConfig", "StudySpec", "SeriesSpec", "PlanTotals", "generate", "generate_blocks", "totals"]
