"""Experiments shipped with the package (demo, benchmarks, ablations, figures); never imported
by the library.
"""
