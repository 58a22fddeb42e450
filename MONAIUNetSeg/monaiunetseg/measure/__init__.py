"""Measurements of a finding on a labelmap (volume, diameters, position) and their change between two time points."""
