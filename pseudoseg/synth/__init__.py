"""The built-in synthetic benchmarks: deterministic generators of data sets in the layouts pseudoseg reads.

* :mod:`pseudoseg.synth.polyp`: colonoscopy-like 2-D images with polyp masks, in
  the PraNet layout (a training pool and five test domains);
* :mod:`pseudoseg.synth.ct`: abdominal CT-like NIfTI volumes with an organ (and,
  optionally, lesions inside it as a second class), in the Decathlon layout.

Both are what ``pseudoseg data synth`` writes; the data readers in
:mod:`pseudoseg.data` treat them like any other data set.
"""
