"""Small utilities: visualisation, result files written atomically."""
