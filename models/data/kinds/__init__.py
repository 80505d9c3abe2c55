"""Kinds of site data: tables, images, sequences, clinical notes.

``base`` is the interface every kind implements, one module per kind implements it, and
``registry`` finds the kind a schema declares.
"""
