"""NAT behaviour: the STUN codec and responder, and ``pierce nat`` discovery (RFC 5780, RFC 4787 terms)."""
