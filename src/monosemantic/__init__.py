"""monosemantic: dictionary learning on neural networks, after Towards Monosemanticity (2023)
and Toy Models of Superposition (2022)."""

__version__ = "0.1.0"
