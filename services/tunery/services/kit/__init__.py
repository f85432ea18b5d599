"""The shared server kit: every Tunery service is built from these parts, in the same way."""
