"""The embedded default: tiny models built from configs, and the toy world (DESIGN.md §6)."""
