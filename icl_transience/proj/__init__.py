"""One package per paper, on the generic core."""
