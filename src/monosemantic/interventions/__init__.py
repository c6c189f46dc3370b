"""Interventions on the LM through a dictionary: steering (clamp or add a feature) and ablation."""
