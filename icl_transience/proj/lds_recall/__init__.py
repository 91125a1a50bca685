"""Associative recall over interleaved linear dynamical systems (Daniels et al. 2025)."""
