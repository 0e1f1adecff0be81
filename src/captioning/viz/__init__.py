"""Figures: attention heat-maps and the HTML gallery."""
