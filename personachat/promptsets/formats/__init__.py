"""Prompt-set file formats, one module each: ``NAME``, ``EXTENSIONS`` and ``parse(text, checker)``.

:mod:`personachat.promptsets.load` lists them in ``FORMATS``; to add a format, write a module with
those three names and add it there (see docs/architecture.md).
"""
