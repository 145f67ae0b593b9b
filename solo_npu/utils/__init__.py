"""Small utilities: visualisation."""
