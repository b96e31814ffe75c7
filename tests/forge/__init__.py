"""Forge of synthetic Windows memory images."""
