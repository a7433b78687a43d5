#!/usr/bin/env python3
"""Fails when a workspace crate depends on a crate in its own layer or a layer above it.

The layers are the crate map of ARCHITECTURE.md, lowest first; a crate may use any crate in a
lower layer and none in its own or a higher one. Only [dependencies] count: dev-dependencies
are for tests, and the server's tests use the test kit that is built on the server.
A crate missing from LAYERS fails too, so a new crate has to be placed on purpose.
"""

import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent

LAYERS = [
    # pure: no IO
    ["cortex-domain", "cortex-crypto"],
    # settings, wire formats
    ["cortex-config", "cortex-wire", "cortex-guard"],
    # one resource each: SQL, limit counters, provider connections, engine processes
    ["cortex-store", "cortex-limits", "cortex-upstream", "cortex-engines"],
    # the data plane
    ["cortex-gateway"],
    # the control plane's services
    ["cortex-control"],
    # HTTP: router, admin handlers, console, serve loop
    ["cortex-server"],
    # entry points and test support
    ["cortex-cli", "cortex-testkit"],
]


def main():
    layer_of = {name: i for i, names in enumerate(LAYERS) for name in names}
    problems = []
    for manifest in sorted((ROOT / "crates").glob("*/Cargo.toml")):
        package = tomllib.loads(manifest.read_text())
        name = package["package"]["name"]
        if name not in layer_of:
            problems.append(f"{name}: not placed in a layer (scripts/crate-layers.py LAYERS)")
            continue
        for dependency in package.get("dependencies", {}):
            if dependency not in layer_of:
                continue
            if layer_of[dependency] >= layer_of[name]:
                problems.append(
                    f"{name} (layer {layer_of[name]}) depends on {dependency} "
                    f"(layer {layer_of[dependency]}): a crate may use only lower layers"
                )
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{len(layer_of)} crates in {len(LAYERS)} layers: every dependency points down")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
