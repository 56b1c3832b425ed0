"""Small TCP/UDP peers for podnet's NAT tests (run inside test namespaces only).

  netcat.py http-whoami ADDR PORT            answer every GET with the client's address
  netcat.py udp-echo ADDR PORT               answer each datagram with "<data> from <client ip>"
  netcat.py udp-ask ADDR PORT MESSAGE [SPORT] send one datagram (from SPORT), print the answer
                                             (2 s timeout)
  netcat.py tcp-record ADDR PORT FILE        accept and hold connections; keep FILE = peers seen
  netcat.py tcp-echo ADDR PORT               echo every connection
  netcat.py tcp-open ADDR PORT N HOLD        open N connections at once, print how many, hold
  netcat.py tcp-exhaust ADDR PORT N          open N connections, try one more (2 s), echo on all
  netcat.py tcp-slow ADDR PORT DELAY         read each connection to its end, answer DELAY s later
  netcat.py tcp-half-close ADDR PORT MSG     send MSG, shut the sending side, print the answer
  netcat.py tcp-hold ADDR PORT FILE          connect and keep the connection; each line added to
                                             FILE.in is sent, its echo appended to FILE.out
  netcat.py udp-refused ADDR PORT            send on a connected socket: print "refused" when the
                                             peer's "port unreachable" comes back, else "timeout"
  netcat.py tcp-sink ADDR PORT               read each connection to its end, answer the byte count
  netcat.py tcp-send ADDR PORT BYTES         send BYTES, shut the sending side, print the answer
  netcat.py http-stall ADDR PORT N SECS     for SECS, keep N connections open that send half a
                                             request head and nothing more (one replaced as soon
                                             as the server drops it); print how many were opened
                                             so far, every second
  netcat.py udp-spray ADDR PORT N            N datagrams, each a flow of its own (source ports, then
                                             destination ports from PORT on; raw socket)
"""
import json, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])


def listen(backlog):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(backlog)
    return srv


def serve(handle):
    """Accept connections forever, each handled by `handle(conn)` in a thread of its own."""
    srv = listen(64)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()

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
        data, peer = s.recvfrom(65535)
        s.sendto(data + b" from " + peer[0].encode(), peer)
elif mode == "udp-ask":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    if len(sys.argv) > 5:
        s.bind(("", int(sys.argv[5])))
    s.sendto(sys.argv[4].encode(), (addr, port))
    print(s.recvfrom(65535)[0].decode())
elif mode in ("tcp-record", "tcp-echo"):
    srv = listen(4096)
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
elif mode == "tcp-slow":
    def slow(c):
        data = b""
        while chunk := c.recv(1024):
            data += chunk
        time.sleep(float(sys.argv[4]))
        c.sendall(b"late answer to " + data)
        c.close()
    serve(slow)
elif mode == "tcp-half-close":
    s = socket.create_connection((addr, port), timeout=60)
    s.sendall(sys.argv[4].encode())
    s.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := s.recv(1024):
        answer += chunk
    print(answer.decode())
elif mode == "tcp-hold":
    import os
    s = socket.create_connection((addr, port), timeout=10)
    done = 0
    while True:
        path = sys.argv[4] + ".in"
        lines = open(path).read().splitlines() if os.path.exists(path) else []
        for line in lines[done:]:
            s.sendall(line.encode())
            with open(sys.argv[4] + ".out", "a") as out:
                out.write(s.recv(1024).decode() + "\n")
        done = len(lines)
        time.sleep(0.1)
elif mode == "udp-spray":
    import struct
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    sent = 0
    for i in range(int(sys.argv[4])):
        sport, dport = 1024 + i % 64000, port + i // 64000
        # Checksum 0: none (allowed over IPv4); the kernel adds the IPv4 header.
        raw.sendto(struct.pack("!HHHH", sport, dport, 9, 0) + b"x", (addr, 0))
        sent += 1
    print(sent)
elif mode == "udp-refused":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((addr, port))
    s.send(b"anyone?")
    try:
        s.recv(64)
        print("answered")
    except ConnectionRefusedError:
        print("refused")
    except socket.timeout:
        print("timeout")
elif mode == "tcp-sink":
    def sink(c):
        n = 0
        while chunk := c.recv(65536):
            n += len(chunk)
        c.sendall(str(n).encode())
        c.close()
    serve(sink)
elif mode == "tcp-send":
    s = socket.create_connection((addr, port), timeout=20)
    s.sendall(b"x" * int(sys.argv[4]))
    s.shutdown(socket.SHUT_WR)
    print(s.recv(64).decode())
elif mode == "http-stall":
    import select
    n, end = int(sys.argv[4]), time.time() + float(sys.argv[5])
    opened, socks, said = 0, [], 0.0
    while time.time() < end:
        if time.time() - said >= 1:
            print(opened, flush=True)
            said = time.time()
        while len(socks) < n:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((addr, port))
            socks.append((s, False))
            opened += 1
        ready = select.select([], [s for s, sent in socks if not sent], [], 0.05)[1]
        kept = []
        for s, sent in socks:
            if s in ready:
                try:
                    s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    sent = True
                except OSError:
                    s.close()
                    continue
            if sent and select.select([s], [], [], 0)[0]:
                try:
                    if not s.recv(4096):
                        raise OSError("closed")
                except OSError:
                    s.close()
                    continue
            kept.append((s, sent))
        socks = kept
        time.sleep(0.05)
    print(opened, flush=True)
