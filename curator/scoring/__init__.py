"""Scoring: embeddings and neighbours, pairwise utilities, gradient scores."""
