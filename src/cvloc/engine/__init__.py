"""Training engine: data loading, distributed setup, the loop, logging.

The public entry points are :func:`cvloc.train.train` and the ``cvloc train`` command.
"""
