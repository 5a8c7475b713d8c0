#!/usr/bin/env python3
"""Fails when Cargo.toml's rust-version is not the real minimum of the locked dependency
tree: the newest `rust-version` any locked package declares."""
import json, re, subprocess, sys

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked"],
    check=True, capture_output=True, text=True).stdout)

def key(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

deps = [(p["rust_version"], p["name"], p["version"]) for p in meta["packages"]
        if p.get("rust_version") and p["source"]]
need, name, version = max(deps, key=lambda d: key(d[0]))
declared = re.search(r'^rust-version\s*=\s*"([^"]+)"', open("Cargo.toml").read(), re.M).group(1)
if key(declared) != key(need):
    sys.exit(f"rust-version = {declared} in Cargo.toml, but {name} {version} needs {need}: "
             f"set rust-version (and README's toolchain line) to {need}")
readme = open("README.md").read()
if f"({need}+" not in readme:
    sys.exit(f"README's toolchain line does not say {need}+")
print(f"rust-version {declared} is the locked tree's minimum ({name} {version})")
