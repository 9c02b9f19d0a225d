"""Datasets, the weak-label model, the datastore reader, phantoms and importers."""
