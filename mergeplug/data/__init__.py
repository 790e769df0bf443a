"""Offline time-series data shipped with mergeplug (see SOURCES.md)."""
