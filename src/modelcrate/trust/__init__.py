"""Trust: key pairs (keys.py), signatures with OpenSSF model-signing (signing.py), and
encryption at rest (crypto.py). The registry stores signatures, the signing policy and
the audit log (registry/trust.py)."""
