"""Learning plateaus of ICL (Fu et al.)."""
