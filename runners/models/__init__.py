"""Models: catalog cards, local and packaged weights, the decoder built from a card, baselines."""
