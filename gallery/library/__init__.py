"""A whole photo library searched by face (issue 15): ``scan`` indexes every face of every photo under a folder
tree, ``clusters`` groups the faces nobody is assigned to, ``name`` / ``unassign`` / ``move`` assign them to
people (which enrolls them), ``find`` lists the photos a person appears in.

Modules: :mod:`~gallery.library.scan` (the incremental scanner), :mod:`~gallery.library.suggest` (matches to
enrolled people, overlap with reference photos), :mod:`~gallery.library.clustering` (the algorithms, pure),
:mod:`~gallery.library.clusters` (clustering the store's faces, stable ids, contact sheets),
:mod:`~gallery.library.naming` (name, unassign, move, merge), :mod:`~gallery.library.find`.
"""
