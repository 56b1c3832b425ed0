"""Small TCP/UDP peers for podnet's NAT tests (run inside test namespaces only).

  netcat.py http-whoami ADDR PORT            answer every GET with the client's address
  netcat.py udp-echo ADDR PORT               answer each datagram with "<data> from <client ip>"
  netcat.py udp-ask ADDR PORT MESSAGE [SPORT] send one datagram (from SPORT), print the answer
                                             (2 s timeout)
  netcat.py tcp-record ADDR PORT FILE        accept and hold connections; keep FILE = peers seen
  netcat.py tcp-echo ADDR PORT               echo every connection
  netcat.py tcp-open ADDR PORT N HOLD        open N connections at once, print how many, hold
  netcat.py tcp-exhaust ADDR PORT N          open N connections, try one more (2 s), echo on all
"""
import json, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

if mode == "http-whoami":
    class Whoami(BaseHTTPRequestHandler):
        def do_GET(self):
            body = self.client_address[0].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    ThreadingHTTPServer((addr, port), Whoami).serve_forever()
elif mode == "udp-echo":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data + b" from " + peer[0].encode(), peer)
elif mode == "udp-ask":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    if len(sys.argv) > 5:
        s.bind(("", int(sys.argv[5])))
    s.sendto(sys.argv[4].encode(), (addr, port))
    print(s.recvfrom(2048)[0].decode())
elif mode in ("tcp-record", "tcp-echo"):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(4096)
    held, peers = [], set()
    def echo(c):
        while data := c.recv(1024):
            c.sendall(data)
    while True:
        c, peer = srv.accept()
        if mode == "tcp-echo":
            threading.Thread(target=echo, args=(c,), daemon=True).start()
            continue
        held.append(c)
        peers.add("%s:%d" % peer)
        with open(sys.argv[4] + ".tmp", "w") as f:
            f.write("\n".join(sorted(peers)))
        import os
        os.replace(sys.argv[4] + ".tmp", sys.argv[4])
elif mode == "tcp-open":
    n, hold = int(sys.argv[4]), float(sys.argv[5])
    socks = [socket.create_connection((addr, port), timeout=5) for _ in range(n)]
    print(len(socks), flush=True)
    time.sleep(hold)
elif mode == "tcp-exhaust":
    n = int(sys.argv[4])
    socks = [socket.create_connection((addr, port), timeout=5) for _ in range(n)]
    try:
        socket.create_connection((addr, port), timeout=2)
        extra = "connected"
    except OSError as e:
        extra = type(e).__name__
    echoed = 0
    for s in socks:
        s.sendall(b"still here")
        echoed += s.recv(64) == b"still here"
    print(json.dumps({"opened": len(socks), "extra": extra, "echoed": echoed}))
