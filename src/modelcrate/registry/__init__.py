"""Registries store crates: metadata in a database, file bytes in a content-addressed blob store."""
