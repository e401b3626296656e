"""Running the collection: notebooks (profiles, papermill, results.json, publishing), sweeps, data fetch/verify,
artifacts shared between notebooks, and the command line (``python -m helpers ...``)."""
