"""The model-repository format: the on-disk contract between the exporter and the server."""
