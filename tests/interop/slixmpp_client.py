"""Logs in to a Rookery server with slixmpp (a stock Python XMPP library) and exercises the basics.

Usage: slixmpp_client.py HOST PORT JID PASSWORD CAFILE MODE MECHANISM
  MODE is "starttls" or "direct"; MECHANISM is a SASL mechanism name, or "auto" for slixmpp's choice.
Prints one JSON line with what it observed; exits 0 when the session started, 1 otherwise.
"""
import asyncio
import json
import ssl
import sys

import slixmpp


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, mechanism):
        super().__init__(jid, password)
        self.result = {"session": False}
        if mechanism != "auto":
            # ClientXMPP registers this plugin itself, so configure the instance.
            self.plugin["feature_mechanisms"].use_mech = mechanism
        for plugin in ("xep_0030", "xep_0092", "xep_0199", "xep_0202"):
            self.register_plugin(plugin)
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("failed_all_auth", self.failed)
        self.add_event_handler("auth_success", self.on_auth_success)
        self.add_event_handler("message", self.message)
        self.got_message = asyncio.Event()

    def on_auth_success(self, _):
        self.result["mechanism"] = self.plugin["feature_mechanisms"].mech.name

    def failed(self, _):
        self.result["error"] = "authentication failed"
        self.disconnect()

    def message(self, msg):
        if msg["body"] == "note to self":
            self.got_message.set()

    async def start(self, _):
        self.result["session"] = True
        self.result["bound_jid"] = str(self.boundjid)
        server = self.boundjid.domain
        try:
            self.result["ping_rtt"] = await self.plugin["xep_0199"].ping(server, timeout=10)
            info = await self.plugin["xep_0030"].get_info(jid=server, timeout=10)
            self.result["features"] = sorted(info["disco_info"]["features"])
            self.result["identities"] = [list(i) for i in info["disco_info"]["identities"]]
            version = await self.plugin["xep_0092"].get_version(server, timeout=10)
            self.result["version"] = version["software_version"]["name"]
            self.send_message(mto=self.boundjid.full, mbody="note to self", mtype="chat")
            await asyncio.wait_for(self.got_message.wait(), 10)
            self.result["message_to_self"] = True
        except Exception as e:  # report, do not hide: the Rust test asserts on the fields above
            self.result["error"] = f"{type(e).__name__}: {e}"
        self.disconnect()


def main():
    host, port, jid, password, cafile, mode, mechanism = sys.argv[1:8]
    client = Client(jid, password, mechanism)
    client.ssl_context = ssl.create_default_context(cafile=cafile)
    client.enable_direct_tls = mode == "direct"
    client.enable_starttls = mode == "starttls"
    client.enable_plaintext = False
    client.connect(host=host, port=int(port))
    loop = asyncio.get_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(client.disconnected, 30))
    except asyncio.TimeoutError:
        client.result.setdefault("error", "timed out")
    print(json.dumps(client.result))
    sys.exit(0 if client.result.get("session") and "error" not in client.result else 1)


if __name__ == "__main__":
    main()
