"""Direct peer-to-peer paths for xtcp/xudp: the owner's identity, QUIC in a punched UDP hole, TCP
simultaneous open, and the rendezvous that starts them (the punching itself is `pierce.nat.punch`)."""
