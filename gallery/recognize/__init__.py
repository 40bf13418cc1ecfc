"""Answering "who is this?": :mod:`~gallery.recognize.identify` every face of a photo,
:mod:`~gallery.recognize.verify` two photos, :mod:`~gallery.recognize.annotate` draws the answers."""
