"""The feature browser: a local web app over a run's feature store, and a static export of it."""
