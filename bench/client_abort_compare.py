# Client close -> upstream close: how long a departed client keeps the provider busy, for nginx
# (proxy_ignore_client_abort off, the default) and ringgate, same slow upstream, same run.
# Usage: python3 bench/client_abort_compare.py RINGGATE_BIN [MONOIO_FORCE_LEGACY_DRIVER=1]  (needs nginx)
import socket, threading, time, subprocess, sys, os, tempfile

UP, NG, RG, RGA = 19711, 19712, 19713, 19714
closed_at = {}
mode = {"m": "silent"}

def upstream():
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", UP)); srv.listen(64)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

def serve(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d: return
        buf += d
    key = mode["m"]
    if key == "stream-pause":
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n1b\r\ndata: {\"choices\":[\"tok\"]}\n\n\r\n")
    c.settimeout(20)
    try:
        while True:
            d = c.recv(4096)
            if not d: break
    except Exception:
        pass
    closed_at[key] = time.monotonic()

def run_case(port, key):
    mode["m"] = key
    closed_at.pop(key, None)
    s = socket.create_connection(("127.0.0.1", port))
    body = b'{"model":"m","stream":true}'
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    if key == "stream-pause":
        got = b""
        while b"tok" not in got:
            got += s.recv(4096)
    else:
        time.sleep(1.0)
    left = time.monotonic(); s.close()
    for _ in range(400):
        if key in closed_at: return (closed_at[key] - left) * 1000
        time.sleep(0.05)
    return None

threading.Thread(target=upstream, daemon=True).start()
d = tempfile.mkdtemp()
open(f"{d}/nginx.conf", "w").write(f"""
worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{}}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};
  upstream up {{ server 127.0.0.1:{UP}; keepalive 8; }}
  server {{ listen 127.0.0.1:{NG};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 300s; }} }} }}
""")
ng = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d], stderr=subprocess.DEVNULL)
os.makedirs(f"{d}/rg", exist_ok=True)
open(f"{d}/rg/gateway.toml", "w").write(f"""
[server]
listen = "127.0.0.1:{RG}"
workers = 1
[admin]
listen = "127.0.0.1:{RGA}"
[upstreams.up]
url = "http://127.0.0.1:{UP}"
[[routes]]
name = "all"
prefix = "/"
upstream = "up"
read_timeout_ms = 300000
""")
rg = subprocess.Popen([sys.argv[1], "--config", f"{d}/rg/gateway.toml"], stderr=subprocess.DEVNULL, env={**os.environ, **dict(kv.split("=") for kv in sys.argv[2:])})
time.sleep(1.5)
for key in ["silent", "stream-pause"]:
    for name, port in [("nginx", NG), ("ringgate", RG)]:
        ms = run_case(port, key)
        print(f"{key:13} {name:9} upstream closed {'never (20 s)' if ms is None else f'{ms:.0f} ms'} after the client")
ng.terminate(); rg.terminate()
