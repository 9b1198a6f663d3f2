"""Router port mapping: ask the NAT in front of this host to forward a public port here.

- `natpmp`: NAT-PMP (RFC 6886) messages, sans-I/O codec.
- `pcp`: PCP (RFC 6887) messages (common headers, ANNOUNCE, MAP, options), sans-I/O codec.
- `epoch`: tells from the epoch in each answer whether the gateway restarted and lost its mappings.
- `gateway`: finds the default IPv4 gateway (Linux ``/proc/net/route``).
- `client`: the asyncio client: PCP first, NAT-PMP fallback, retransmissions under one deadline, then
  UPnP-IGD.
- `upnp`: UPnP-IGD v1/v2 (SSDP discovery, SOAP) through async-upnp-client; imported only when tried.
- `lease`: a mapping kept alive, renewed, made again after a router restart, deleted on exit.
"""
