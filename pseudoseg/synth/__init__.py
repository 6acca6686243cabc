"""The built-in synthetic benchmarks: deterministic generators of data sets in the layouts pseudoseg reads.

* :mod:`pseudoseg.synth.polyp`: colonoscopy-like 2-D images with polyp masks, in
  the PraNet layout (a training pool and five test domains);
* :mod:`pseudoseg.synth.ct`: abdominal CT-like NIfTI volumes with an organ (and,
  optionally, lesions inside it as a second class), in the Decathlon layout.

Both are what ``pseudoseg data synth`` writes; the data readers in
:mod:`pseudoseg.data` treat them like any other data set.
"""

from __future__ import annotations

import numpy as np

from pseudoseg.errors import UserError


def require_integer(name: str, value: object, *, minimum: int) -> None:
    """A generator's count or size: an integer of at least ``minimum`` (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
