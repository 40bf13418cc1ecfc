"""facegallery's library API: enroll, recognize, heads, calibration, benchmark and gallery management.

The CLI (``cli``) and the web app (``app``) are thin layers over these subpackages; they in turn use
``indexer`` (images, detection, embedders, FAISS) and ``db`` (SQLAlchemy models and queries).
"""
