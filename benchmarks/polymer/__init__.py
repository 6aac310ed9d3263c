"""The sequence-defined polymer benchmark (issue #11): dataset generation and its config."""
