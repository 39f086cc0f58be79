"""Small, documented compatibility fixes that must run before third-party imports."""
