"""Transience (Singh et al. 2023) and strategy coopetition (Singh et al. 2025)."""
