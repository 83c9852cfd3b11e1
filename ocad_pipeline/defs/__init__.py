"""The definitions of the ``ocad`` code location, found by ``dg.load_from_defs_folder``.

``assets/`` one module per asset group (data -> datasets -> models -> evaluation, tuning),
``jobs.py`` the jobs, the weekly schedule and the executor, ``resources.py`` the resources
(data directory, IO manager, registry, dataset settings, tracking), ``configs.py`` the run
config derived from the library's dataclasses.
"""
