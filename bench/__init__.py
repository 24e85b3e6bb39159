"""The benchmark suite, a package of the source checkout: `backprop bench` or `python -m bench.suite`.

suite.py measures; peers.py holds the hand-written steps it measures against; report.py writes the
results (bench/results/).
"""
