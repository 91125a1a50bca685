"""Layers shared by the projects' models."""
