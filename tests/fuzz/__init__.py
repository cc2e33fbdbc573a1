"""Grammar-aware generators of hostile input, and the contract each input must meet.

Three surfaces that other people control or can spoil:

- the config (``vramwatch.config.load``): every input ends in a ``Config`` or
  a ``ConfigError`` that names the file, never in another exception, and never
  in the last-resort "this is a bug" error;
- the state file (``StateStore.load``): every input ends in a ``Restored``
  (times no later than now, at most ``MAX_TIMES_PER_UNIT`` per unit), and the
  next save works;
- ``/proc`` and cgroupfs (``Sampler.sample`` and ``ProcFs``): every fixture
  tree, with hostile names, garbage, vanished entries and ``EACCES``, ends in
  a ``Snapshot``.

``tests/unit/test_fuzz_inputs.py`` runs a fixed-seed slice of each in CI;
``bench/fuzz_inputs.py`` runs 100,000 and more (docs/reliability.md).
"""
