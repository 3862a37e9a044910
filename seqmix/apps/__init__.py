"""The applications: one package per app, each with an ``app.py`` that defines ``APP``.

An app package is found by :func:`seqmix.cli.list_apps` without any edit here.
"""
