# Two ringgate binaries side by side in one run: proxy CPU per request and req/s, rounds
# alternating A/B, each with one worker pinned to core 0; the same nginx `return 200` upstream
# and wrk on core 1. Usage: python3 bench/ab_cpu.py BEFORE_BIN AFTER_BIN [rounds] [secs]
# (needs nginx, wrk, taskset). Used for before/after figures of a change to the request path.
import os, subprocess, sys, tempfile, time, statistics, re
before, after = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
secs = int(sys.argv[4]) if len(sys.argv) > 4 else 8
d = tempfile.mkdtemp()
UP = 19801
body = '{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
open(f"{d}/nginx.conf","w").write(f"""
worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000;
  server {{ listen 127.0.0.1:{UP}; location / {{ default_type application/json; return 200 '{body}'; }} }} }}
""")
ng = subprocess.Popen(["taskset","-c","1","nginx","-c",f"{d}/nginx.conf","-p",d], stderr=subprocess.DEVNULL)
procs = {}
for name, binary, port in [("before", before, 19811), ("after", after, 19812)]:
    cdir = f"{d}/{name}"; os.makedirs(cdir)
    open(f"{cdir}/gateway.toml","w").write(f"""
[server]
listen = "127.0.0.1:{port}"
workers = 1
[admin]
listen = "127.0.0.1:{port+100}"
[upstreams.up]
url = "http://127.0.0.1:{UP}"
keepalive = 64
[limits.general]
rate_per_second = 1000000
burst = 1000000
key = "client_ip"
[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
upstream = "up"
limit = "general"
retry_on = ["error", "timeout", "http_502", "http_503", "http_504"]
tries = 3
""")
    p = subprocess.Popen(["taskset","-c","0",binary,"--config",f"{cdir}/gateway.toml"], stderr=subprocess.DEVNULL, env={**os.environ, "RINGGATE_LOG":"warn"})
    procs[name] = (p, port)
time.sleep(2)
open(f"{d}/post.lua","w").write('wrk.method = "POST"\nwrk.body = \'{"model":"m","messages":[{"role":"user","content":"hello there"}]}\'\nwrk.headers["Content-Type"] = "application/json"\n')
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
res = {"before": [], "after": []}
for r in range(rounds):
    order = ["before","after"] if r % 2 == 0 else ["after","before"]
    for name in order:
        p, port = procs[name]
        c0 = cpu(p.pid)
        out = subprocess.run(["taskset","-c","1","wrk","-t1","-c64",f"-d{secs}s","--latency","-s",f"{d}/post.lua",f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True).stdout
        c1 = cpu(p.pid)
        reqs = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p99 = re.search(r"99%\s+(\S+)", out).group(1)
        errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        us = (c1 - c0) / reqs * 1e6
        res[name].append(us)
        print(f"round {r+1} {name:6} {rps:9.0f} req/s  p99 {p99:>8}  proxy CPU {us:5.1f} µs/request  non-2xx {errs.group(1) if errs else 0}", flush=True)
for p, _ in procs.values(): p.terminate()
ng.terminate()
b, a = statistics.median(res["before"]), statistics.median(res["after"])
print(f"median proxy CPU per request: before {b:.1f} µs, after {a:.1f} µs, after/before {a/b:.3f}")
