"""The Streamlit web page and what it shows, over the ``gallery`` API only (never ``db`` or ``indexer``)."""
