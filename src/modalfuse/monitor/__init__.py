"""Monitoring: the prediction log, drift against the training reference, training-serving skew."""
