"""ocad-serve: the online detection service (see ocad_detectors/serve/app.py for the routes)."""
