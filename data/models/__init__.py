"""The bundled models (package data geounet.bundled): weights with their cards, learning curves and scores."""
