"""Getting faces into the gallery: folder scanning (:mod:`~gallery.enroll.scan`), the prepare stage
(:mod:`~gallery.enroll.prepare`), enrollment (:mod:`~gallery.enroll.enroll`) and re-embedding
(:mod:`~gallery.enroll.reembed`). Nothing is imported here: ``gallery.enroll.scan`` (stored paths) is used by
readers such as ``find`` that must not pay for torch."""
