"""The benchmark harness behind ``scripts/bench``: images, peers, measurements, report.

Runs as root on a real disk. Every mount and process it starts is owned by a
context manager, so Ctrl-C leaves nothing mounted or running.
"""
