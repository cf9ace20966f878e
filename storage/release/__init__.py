"""The release export's pieces."""
