"""Encoders, the FAISS index, candidate search and negative-selection strategies."""
