#!/usr/bin/env python3
"""Helpers for bench/signed_in.sh, standard library only.

  signin  BASE_PORT ACTIVATION_URL   walk the partner guide over real HTTP (choose a
                                     password, enrol with the secret the page showed, wait
                                     for the next code, sign in to the Portal) and print
                                     the Portal's app-cookie token
  seed    N TOKENS_OUT < export > import
                                     add N more signed-in Portal sessions (auth-origin
                                     session + app session, as a sign-in creates them) to a
                                     `portcullis store export`; write their cookie tokens
  csrf    PORT                       print "cookie-value form-token" for a sign-in POST
  idle    PORT N SECONDS             hold N idle keep-alive connections (each served one
                                     request first), then report how many still answer
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import struct
import sys
import time
import urllib.parse

PASSWORD = "bench-Correct-Horse-Battery-42"


def totp(secret_b32, at):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(at) // 30), hashlib.sha1).digest()
    o = mac[-1] & 15
    return "%06d" % ((struct.unpack(">I", mac[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)


class Browser:
    """Cookies per host, redirects followed by hand: every host is 127.0.0.1:port."""

    def __init__(self, port):
        self.port = port
        self.jar = {}

    def request(self, method, url, form=None):
        for _ in range(10):
            u = urllib.parse.urlsplit(url)
            host = u.netloc
            headers = {"Host": host, "Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
            cookies = self.jar.get(u.hostname, {})
            if cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                headers["Origin"] = f"{u.scheme}://{host}"
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            c.request(method, u.path + ("?" + u.query if u.query else ""), body, headers)
            r = c.getresponse()
            text = r.read().decode("utf-8", "replace")
            for k, v in r.getheaders():
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    value = rest.split(";", 1)[0]
                    self.jar.setdefault(u.hostname, {})[name] = value
            c.close()
            if r.status in (301, 302, 303, 307, 308):
                url = urllib.parse.urljoin(url, r.getheader("Location"))
                if r.status in (301, 302, 303):
                    method, form = "GET", None
                continue
            return r.status, text, url
        raise SystemExit("too many redirects")


def field(page, name):
    m = re.search(r'name="%s"[^>]*value="([^"]*)"' % name, page) or re.search(
        r'value="([^"]*)"[^>]*name="%s"' % name, page)
    if not m:
        raise SystemExit(f"no field {name} in page:\n{page[:2000]}")
    return m.group(1)


def signin(port, activation_url):
    b = Browser(port)
    login = urllib.parse.urlsplit(activation_url)
    login_base = f"{login.scheme}://{login.netloc}"
    status, page, _ = b.request("GET", activation_url)
    assert status == 200, page
    form = {"csrf": field(page, "csrf"), "token": field(page, "token"),
            "password": PASSWORD, "password2": PASSWORD}
    status, page, _ = b.request("POST", login_base + "/.portcullis/activate", form)
    assert status == 200, page
    secret = urllib.parse.parse_qs(urllib.parse.urlsplit(
        re.search(r'href="(otpauth://[^"]+)"', page).group(1).replace("&amp;", "&")).query)["secret"][0]
    now = time.time()
    status, page, _ = b.request("POST", login_base + "/.portcullis/enroll",
                                {"csrf": field(page, "csrf"), "rd": "", "code": totp(secret, now)})
    assert "Enter your code" in page, page
    # The code used at Finish is spent: wait for the next one, as the guide says.
    time.sleep(30 - now % 30 + 1)
    status, page, _ = b.request("POST", login_base + "/.portcullis/code",
                                {"csrf": field(page, "csrf"), "rd": "", "code": totp(secret, time.time())})
    assert "You are signed in" in page, page
    portal = login_base.replace("login.", "portal.") + "/index.html"
    status, page, url = b.request("GET", portal)
    assert status == 200 and url == portal, (status, url, page[:500])
    print(b.jar["portal.localhost"]["portcullis-app"])


def seed(n, tokens_out):
    lines = sys.stdin.read().splitlines()
    sessions = [json.loads(l) for l in lines if '"table":"session"' in l]
    parent = next(s for s in sessions if s["parent"] is None)
    with open(tokens_out, "w") as out:
        for line in lines:
            print(line)
        for _ in range(n):
            p_hash = hashlib.sha256(os.urandom(32)).hexdigest()
            raw = os.urandom(32)
            token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            s = dict(parent, id_hash=p_hash)
            print(json.dumps(s, separators=(",", ":")))
            child = next(x for x in sessions if x["parent"] is not None)
            c = dict(child, id_hash=hashlib.sha256(raw).hexdigest(), parent=p_hash)
            print(json.dumps(c, separators=(",", ":")))
            out.write(token + "\n")


def csrf(port):
    b = Browser(port)
    status, page, _ = b.request("GET", f"http://login.localhost:{port}/.portcullis/login")
    cookie = b.jar["login.localhost"]["portcullis-csrf"]
    print(cookie, field(page, "csrf"))


def idle(port, n, seconds):
    req = (f"GET /.portcullis/healthz HTTP/1.1\r\nHost: portal.localhost:{port}\r\n\r\n").encode()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        socks.append(s)
    served = 0
    for s in socks:
        s.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        served += data.startswith(b"HTTP/1.1 200")
    print(f"[idle] {served}/{n} keep-alive connections served and now idle", file=sys.stderr, flush=True)
    time.sleep(seconds)
    alive = 0
    for s in socks:
        try:
            s.settimeout(5)
            s.sendall(req)
            if s.recv(12).startswith(b"HTTP/1.1 200"):
                alive += 1
        except OSError:
            pass
    print(f"{served} {alive}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "signin":
        signin(int(args[0]), args[1])
    elif cmd == "seed":
        seed(int(args[0]), args[1])
    elif cmd == "csrf":
        csrf(int(args[0]))
    elif cmd == "idle":
        idle(int(args[0]), int(args[1]), float(args[2]))
    else:
        raise SystemExit(__doc__)
