"""Looking after a gallery: people (list, forget), index rebuilds and checks, embedder weights."""
