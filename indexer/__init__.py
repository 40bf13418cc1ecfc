"""Images, face detection and alignment, augmentation, embedders and their weights, FAISS indexes.

Knows nothing of the database or the gallery: the ``gallery`` package wires this and ``db`` together.
"""
import os

# oneDNN, torch's CPU convolution backend, keeps one compiled primitive per convolution *shape* in a cache of
# 1,024 by default, and a primitive can hold megabytes. MTCNN meets a new shape in almost every batch (the number
# of candidate boxes varies), so with the default the RSS of an enrollment grew by ~0.65 MB per photo (1,000
# LFW photos: +300 MB) and, in a 400-shape micro-test, by 3 GB. 256 kept it flat at no measured speed cost
# (benchmarks/enroll_e2e.py, BENCHMARKS.md). oneDNN reads this when it builds its first primitive, so it is set
# when this package is first imported, before any model can run. A user's value wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
