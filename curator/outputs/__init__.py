"""Mask files and exported subsets."""
