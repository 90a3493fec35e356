"""The agent<->bridge contract: identities, topics, the signed envelope, TLS and the error tree."""
