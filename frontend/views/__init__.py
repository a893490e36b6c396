"""Console pages. Thin: they resolve the organization like the API does, then call services and
selectors. One module per area; frontend/urls.py names them."""
