"""The fleet PKI: one ECDSA P-256 root CA, broker/device/bridge/operator identities and a CRL."""
