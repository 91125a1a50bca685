"""The OLMo stand-in of Daniels et al. 2025: a dictionary corpus."""
