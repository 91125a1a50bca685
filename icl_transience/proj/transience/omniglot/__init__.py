"""The Chan et al. 2022 Omniglot image pipeline."""
