"""Data sets: readers for polyp and CT folders and the built-in synthetic polyp generator."""
