"""Preset run configurations (YAML): demo (laptop CPU, minutes), paper (closer to the paper), tiny (tests)."""
