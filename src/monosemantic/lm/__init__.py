"""The language model whose MLP we open up: a 1-layer transformer, trained here or brought in."""
