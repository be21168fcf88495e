"""Fixtures for the Cloudinary emulator (filled in by the emulator work)."""
