"""The dataset service: validated, immutable, content-addressed training data."""
