"""Interoperability with other ELMo implementations: the official options.json + weights.hdf5 format."""
