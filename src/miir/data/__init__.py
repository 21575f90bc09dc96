"""Data: field schema, readers for each input format, preparation into artifacts."""
