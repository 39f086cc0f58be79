"""Installed as diffalign.pipelines (DESIGN.md §2)."""
