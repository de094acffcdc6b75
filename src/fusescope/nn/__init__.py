"""Neutral building blocks shared by models and engine (no model classes, no training loop)."""
