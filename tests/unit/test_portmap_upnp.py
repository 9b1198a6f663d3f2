"""The UPnP-IGD client's own behaviour against a small IGD in this process (HTTP on 127.0.0.1, real SOAP
through async-upnp-client): the fallback to a permanent lease (error 725), a refusal's code and text,
a renewal that finds the mapping gone, and where UPnP sits in `PortMapClient`'s order.

What a real router daemon (miniupnpd, with SSDP) does is the namespace lab's to test.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from support.streams import free_port

from pierce.portmap.client import Method, NoPortMapping, PortMapClient, PortMapRefused
from pierce.portmap.pcp import Protocol

SERVICE = "urn:schemas-upnp-org:service:WANIPConnection:1"
EXTERNAL = "198.51.100.20"
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")

ROOT_DESC = f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<friendlyName>test IGD</friendlyName><manufacturer>pierce</manufacturer><modelName>t</modelName>
<UDN>uuid:00000000-0000-0000-0000-000000000001</UDN><serviceList/>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<friendlyName>WAN</friendlyName><manufacturer>pierce</manufacturer><modelName>t</modelName>
<UDN>uuid:00000000-0000-0000-0000-000000000002</UDN><serviceList/>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<friendlyName>WAN connection</friendlyName><manufacturer>pierce</manufacturer><modelName>t</modelName>
<UDN>uuid:00000000-0000-0000-0000-000000000003</UDN>
<serviceList><service><serviceType>{SERVICE}</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><SCPDURL>/scpd.xml</SCPDURL>
<controlURL>/ctl</controlURL><eventSubURL>/evt</eventSubURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>"""

VARIABLES = {
    "RemoteHost": "string",
    "ExternalPort": "ui2",
    "PortMappingProtocol": "string",
    "InternalPort": "ui2",
    "InternalClient": "string",
    "PortMappingEnabled": "boolean",
    "PortMappingDescription": "string",
    "PortMappingLeaseDuration": "ui4",
    "ExternalIPAddress": "string",
}
_KEY = ("NewRemoteHost", "NewExternalPort", "NewProtocol")
_ENTRY = (
    "NewInternalPort",
    "NewInternalClient",
    "NewEnabled",
    "NewPortMappingDescription",
    "NewLeaseDuration",
)
ACTIONS = {
    "AddPortMapping": (_KEY + _ENTRY, ()),
    "DeletePortMapping": (_KEY, ()),
    "GetSpecificPortMappingEntry": (_KEY, _ENTRY),
    "GetExternalIPAddress": ((), ("NewExternalIPAddress",)),
}
_RELATED = {
    "NewRemoteHost": "RemoteHost",
    "NewExternalPort": "ExternalPort",
    "NewProtocol": "PortMappingProtocol",
    "NewInternalPort": "InternalPort",
    "NewInternalClient": "InternalClient",
    "NewEnabled": "PortMappingEnabled",
    "NewPortMappingDescription": "PortMappingDescription",
    "NewLeaseDuration": "PortMappingLeaseDuration",
    "NewExternalIPAddress": "ExternalIPAddress",
}


def scpd() -> str:
    def args(names: tuple[str, ...], direction: str) -> str:
        return "".join(
            f"<argument><name>{n}</name><direction>{direction}</direction>"
            f"<relatedStateVariable>{_RELATED[n]}</relatedStateVariable></argument>"
            for n in names
        )

    actions = "".join(
        f"<action><name>{name}</name>"
        f"<argumentList>{args(ins, 'in')}{args(outs, 'out')}</argumentList></action>"
        for name, (ins, outs) in ACTIONS.items()
    )
    variables = "".join(
        f'<stateVariable sendEvents="no"><name>{n}</name><dataType>{t}</dataType></stateVariable>'
        for n, t in VARIABLES.items()
    )
    return (
        '<?xml version="1.0"?><scpd xmlns="urn:schemas-upnp-org:service-1-0"><specVersion><major>1</major>'
        f"<minor>0</minor></specVersion><actionList>{actions}</actionList>"
        f"<serviceStateTable>{variables}</serviceStateTable></scpd>"
    )


def envelope(body: str) -> str:
    return (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
        f"{body}</s:Body></s:Envelope>"
    )


@dataclass
class Igd:
    """The router's side: its mappings, and what it refuses."""

    url: str = ""
    mappings: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    permanent_only: bool = False
    refuse: tuple[int, str] | None = None  # every AddPortMapping gets this error
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        action = request.headers["SOAPACTION"].strip('"').split("#", 1)[1]
        body = ET.fromstring(await request.text()).find(".//{*}Body")
        assert body is not None
        args = {child.tag: child.text or "" for child in body[0]}
        self.calls.append((action, args))
        key = (args.get("NewProtocol", ""), int(args.get("NewExternalPort") or 0))
        out: dict[str, str] = {}
        if action == "AddPortMapping":
            if self.refuse is not None:
                return self.fault(*self.refuse)
            if self.permanent_only and args["NewLeaseDuration"] != "0":
                return self.fault(725, "OnlyPermanentLeasesSupported")
            self.mappings[key] = args
        elif action == "DeletePortMapping" or action == "GetSpecificPortMappingEntry":
            if key not in self.mappings:
                return self.fault(714, "NoSuchEntryInArray")
            if action == "DeletePortMapping":
                del self.mappings[key]
            else:
                out = {name: self.mappings[key][name] for name in _ENTRY}
        elif action == "GetExternalIPAddress":
            out = {"NewExternalIPAddress": EXTERNAL}
        text = "".join(f"<{k}>{v}</{k}>" for k, v in out.items())
        return web.Response(
            text=envelope(f'<u:{action}Response xmlns:u="{SERVICE}">{text}</u:{action}Response>'),
            content_type="text/xml",
        )

    def fault(self, code: int, text: str) -> web.Response:
        detail = (
            '<UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
            f"<errorCode>{code}</errorCode><errorDescription>{text}</errorDescription></UPnPError>"
        )
        body = f"<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>{detail}"
        return web.Response(status=500, text=envelope(body + "</detail></s:Fault>"), content_type="text/xml")


@pytest.fixture
async def igd() -> AsyncIterator[Igd]:
    state = Igd()
    app = web.Application()

    async def root_desc(_: web.Request) -> web.Response:
        return web.Response(text=ROOT_DESC, content_type="text/xml")

    async def service_desc(_: web.Request) -> web.Response:
        return web.Response(text=scpd(), content_type="text/xml")

    app.router.add_get("/rootDesc.xml", root_desc)
    app.router.add_get("/scpd.xml", service_desc)
    app.router.add_post("/ctl", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    state.url = f"http://127.0.0.1:{port}/rootDesc.xml"
    try:
        yield state
    finally:
        await runner.cleanup()


def upnp_client(igd: Igd) -> PortMapClient:
    return PortMapClient(methods=(Method.UPNP,), upnp_location=igd.url)


async def test_map_renew_and_delete(igd: Igd) -> None:
    async with upnp_client(igd) as client:
        mapping = await client.map_port(Protocol.TCP, 7000, external_port=8080, lifetime=600)
        assert (mapping.method, mapping.gateway, mapping.external_port) == (Method.UPNP, LOOPBACK, 8080)
        assert (str(mapping.external_ip), mapping.lifetime, mapping.restarted) == (EXTERNAL, 600, False)
        entry = igd.mappings[("TCP", 8080)]
        assert (entry["NewInternalClient"], entry["NewInternalPort"], entry["NewLeaseDuration"]) == (
            "127.0.0.1",
            "7000",
            "600",
        )
        renewed = await client.renew(mapping)
        assert renewed.restarted is False and renewed.external_port == 8080
        assert [name for name, _ in igd.calls].count("AddPortMapping") == 2
        await client.delete(mapping)
        assert igd.mappings == {}
        assert str((await client.external_address()).ip) == EXTERNAL


async def test_a_router_that_lost_the_mapping_shows_as_a_restart_at_renewal(igd: Igd) -> None:
    async with upnp_client(igd) as client:
        mapping = await client.map_port(Protocol.UDP, 7000, external_port=8080, lifetime=600)
        igd.mappings.clear()  # what a reboot does
        renewed = await client.renew(mapping)
        assert renewed.restarted is True and ("UDP", 8080) in igd.mappings


async def test_only_permanent_leases_gives_a_permanent_mapping(igd: Igd) -> None:
    igd.permanent_only = True
    async with upnp_client(igd) as client:
        mapping = await client.map_port(Protocol.TCP, 7000, external_port=8080, lifetime=600)
        assert mapping.lifetime == 0 and igd.mappings[("TCP", 8080)]["NewLeaseDuration"] == "0"
        assert client.upnp.permanent_only
        await client.renew(mapping, 600)  # remembered: no second 725
        leases = [args["NewLeaseDuration"] for name, args in igd.calls if name == "AddPortMapping"]
        assert leases == ["600", "0", "0"]
        await client.delete(mapping)
        assert igd.mappings == {}


async def test_refusal_carries_the_routers_code_and_text(igd: Igd) -> None:
    igd.refuse = (718, "ConflictInMappingEntry")
    async with upnp_client(igd) as client:
        with pytest.raises(PortMapRefused) as caught:
            await client.map_port(Protocol.TCP, 7000, external_port=8080, lifetime=600)
    assert caught.value.method is Method.UPNP and caught.value.result == 718
    assert "ConflictInMappingEntry" in str(caught.value), caught.value


async def test_auto_tries_upnp_when_pcp_and_natpmp_get_no_answer(igd: Igd) -> None:
    """Nothing listens on the PCP/NAT-PMP port (ICMP says so at once): UPnP-IGD maps."""
    async with PortMapClient(LOOPBACK, port=free_port(), upnp_location=igd.url) as client:
        mapping = await client.map_port(Protocol.TCP, 7000, external_port=8080, lifetime=600)
        assert mapping.method is Method.UPNP and client.method is Method.UPNP


async def test_no_upnp_unless_asked_and_all_attempts_named_when_none_answer() -> None:
    async with PortMapClient(LOOPBACK, port=free_port(), methods=(Method.PCP, Method.NATPMP)) as client:
        with pytest.raises(NoPortMapping):
            await client.map_port(Protocol.TCP, 7000, lifetime=600)
        assert client._upnp is None
    nowhere = f"http://127.0.0.1:{free_port()}/rootDesc.xml"
    async with PortMapClient(LOOPBACK, port=free_port(), upnp_location=nowhere) as client:
        with pytest.raises(NoPortMapping) as caught:
            await client.map_port(Protocol.TCP, 7000, lifetime=600)
    text = str(caught.value)
    assert text.startswith("no port mapping protocol answered: ") and "refused" in text, text
    assert "UPnP-IGD: cannot read the device description" in text, text


def test_async_upnp_client_loads_only_with_upnp() -> None:
    """`pierce map-port` and the PCP/NAT-PMP client load neither async-upnp-client nor aiohttp."""
    code = (
        "import sys, pierce.cli, pierce.portmap.client, pierce.portmap.lease; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('async_upnp_client', 'aiohttp')"
        " or m == 'pierce.portmap.upnp'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
