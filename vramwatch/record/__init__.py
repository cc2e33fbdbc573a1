"""Record and replay (SPEC "Record and replay"): the trace ``run --record`` writes and
``vramwatch replay`` reads.

- :mod:`~vramwatch.record.format`: the records, one line each, and their versions;
- :mod:`~vramwatch.record.trace`: the file and its segments (rotation, pruning, damage);
- :mod:`~vramwatch.record.recorder`: the daemon's side, which feeds the trace;
- :mod:`~vramwatch.record.replay`: the real daemon over a trace;
- :mod:`~vramwatch.record.report`: the summary replay prints;
- :mod:`~vramwatch.record.plot`: ``replay --plot``.

Nothing is imported here: ``vramwatch run`` loads the recorder only, and the trace
modules once a trace is configured (tests/unit/test_footprint.py).
"""
