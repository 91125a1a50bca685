"""Induction-head formation (Singh, Moskovitz, Hill, Chan, Saxe, ICML 2024)."""
