"""Training models on labelled scenes, and evaluating them through the prediction path."""
