"""The model registry: adapter versions with aliases, verified files and full lineage."""
