#!/usr/bin/env python3
"""Build (and run) the README's Rust programs the way a user would.

Every ```rust and ```toml block of README.md must carry a marker on the line
before it, so that no snippet can drift out of the check:

    <!-- readme-check: crate=NAME file=Cargo.toml -->        the [dependencies] block
    <!-- readme-check: crate=NAME file=main.rs [deps=OTHER] [run=KIND] -->
    <!-- readme-check: skip why="..." -->                     shown, not built

Each NAME becomes a fresh binary crate outside the workspace, beside a
`clientgone` symlink to this checkout, so the README's `path =
"../clientgone/crates/..."` dependencies resolve exactly as written. There is
no lock file: Cargo resolves the newest versions, the dependencies' default
features on (prometheus's `protobuf` among them), as for a user. `deps=OTHER`
reuses another crate's dependency block; `run=KIND` starts the program and
holds what it should do against its own /metrics.

    python3 .ci/readme_crates.py [--list]

Build artefacts go to the checkout's target/ (CARGO_TARGET_DIR), so crates
shared with the workspace's build are not built twice.
"""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MARKER = re.compile(r"^<!--\s*readme-check:(.*?)-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")


class CheckError(Exception):
    pass


def blocks(path):
    """(line number, language, marker attributes or None, text) of each fenced block."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang = m.group(1).split(",")[0]
        start = i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if j == len(lines):
            raise CheckError(f"README.md:{start + 1}: a ``` block that never closes")
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = None
        if k >= 0:
            mm = MARKER.match(lines[k].strip())
            if mm:
                marker = dict(
                    (kv.split("=", 1) + [""])[:2] for kv in shlex.split(mm.group(1))
                )
        out.append((start + 1, lang, marker, "\n".join(lines[start + 1 : j]) + "\n"))
        i = j + 1
    return out


def crates_of(path):
    crates = {}
    for line, lang, marker, text in blocks(path):
        if lang not in ("rust", "toml"):
            continue
        if marker is None:
            raise CheckError(
                f"README.md:{line}: a ```{lang} block with no <!-- readme-check: ... --> "
                "marker on the line before it: say which crate it belongs to, or "
                'skip why="..."'
            )
        if "skip" in marker:
            if not marker.get("why"):
                raise CheckError(f"README.md:{line}: skip needs why=\"...\"")
            continue
        name, file = marker.get("crate"), marker.get("file")
        if not name or file not in ("Cargo.toml", "main.rs"):
            raise CheckError(f"README.md:{line}: the marker needs crate=NAME and file=Cargo.toml|main.rs")
        if (lang == "toml") != (file == "Cargo.toml"):
            raise CheckError(f"README.md:{line}: a ```{lang} block cannot be {file}")
        c = crates.setdefault(name, {"line": line})
        if file in c:
            raise CheckError(f"README.md:{line}: crate {name} already has a {file}")
        c[file] = text
        for key in ("deps", "run"):
            if key in marker:
                c[key] = marker[key]
    for name, c in crates.items():
        if "main.rs" not in c:
            raise CheckError(f"README.md:{c['line']}: crate {name} has no main.rs block")
        if "Cargo.toml" not in c:
            other = crates.get(c.get("deps", ""), {})
            if "Cargo.toml" not in other:
                raise CheckError(
                    f"README.md:{c['line']}: crate {name} has no Cargo.toml block and no deps=CRATE that has one"
                )
            c["Cargo.toml"] = other["Cargo.toml"]
    return crates


def write_crate(base, name, c):
    d = os.path.join(base, name)
    os.makedirs(os.path.join(d, "src"))
    with open(os.path.join(d, "Cargo.toml"), "w") as f:
        f.write(
            f'[package]\nname = "readme-{name}"\nversion = "0.1.0"\nedition = "2024"\n'
            "publish = false\n\n" + c["Cargo.toml"]
        )
    with open(os.path.join(d, "src", "main.rs"), "w") as f:
        f.write(c["main.rs"])
    return d


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise CheckError(f"timed out after {timeout} s waiting for {what}" + (f" (last: {last})" if last else ""))


def scrape():
    with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5) as r:
        return r.read().decode()


def series(text, name, **labels):
    """The value of the sample of `name` whose labels include `labels`, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line[: line.rindex("}")]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def run_axum():
    """The client leaves mid-handler: one handler/closed break on /hello."""
    wait_for("the metrics port", lambda: scrape() is not None, 30)
    client = socket.create_connection(("127.0.0.1", 8080), timeout=5)
    client.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
    wait_for(
        "GET /hello in flight",
        lambda: series(scrape(), "http_server_active_requests", http_route="/hello") == 1,
        10,
    )
    client.close()  # FIN while the handler sleeps its 5 s
    wait_for(
        "the break on /metrics",
        lambda: series(
            scrape(),
            "http_server_client_disconnects_total",
            http_route="/hello",
            phase="handler",
            cause="closed",
        )
        == 1,
        10,
    )
    got = series(
        scrape(),
        "http_server_request_duration_seconds_count",
        http_route="/hello",
        outcome="client_disconnect",
        http_response_status_code="499",
    )
    if got != 1:
        raise CheckError(f"the broken request is not in the duration histogram once: {got}")


def run_grpc():
    """A health check answered: one OK call of grpc.health.v1.Health/Check."""
    try:
        import grpc
    except ImportError:
        print("readme: grpc: built; not run: Python's grpcio is missing (pip install grpcio)")
        return
    wait_for("the metrics port", lambda: scrape() is not None, 30)
    channel = grpc.insecure_channel("127.0.0.1:50051")
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    # HealthCheckRequest{service: ""}: the server as a whole; SERVING is field 1 = 1.
    answer = check(b"", timeout=10)
    if answer != b"\x08\x01":
        raise CheckError(f"Health/Check answered {answer!r}, not SERVING")
    channel.close()
    wait_for(
        "the call on /metrics",
        lambda: series(
            scrape(),
            "rpc_server_call_duration_seconds_count",
            rpc_method="grpc.health.v1.Health/Check",
            rpc_type="unary",
            rpc_response_status_code="OK",
        )
        == 1,
        10,
    )


def prepare_https(directory):
    """The certificate and key the program reads, made as the README says."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", "key.pem", "-out", "cert.pem"],
        cwd=directory, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return os.path.join(directory, "cert.pem")


def run_https(cert):
    """A client that verifies the certificate leaves mid-handler: one handler/closed break."""
    import ssl

    wait_for("the metrics port", lambda: scrape() is not None, 30)
    context = ssl.create_default_context(cafile=cert)
    raw = socket.create_connection(("127.0.0.1", 8443), timeout=5)
    client = context.wrap_socket(raw, server_hostname="localhost")
    client.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
    wait_for(
        "GET /hello in flight",
        lambda: series(scrape(), "http_server_active_requests", http_route="/hello") == 1,
        10,
    )
    # A FIN while the handler sleeps its 5 s. Shut down first: closing with
    # bytes unread (the session tickets a TLS 1.3 server sends) would be a RST.
    socket.socket.shutdown(client, socket.SHUT_WR)
    client.close()
    wait_for(
        "the break on /metrics",
        lambda: series(
            scrape(),
            "http_server_client_disconnects_total",
            http_route="/hello",
            phase="handler",
            cause="closed",
        )
        == 1,
        10,
    )
    closes = series(scrape(), "http_server_connection_closes_total", reason="tls_handshake")
    if closes != 0:
        raise CheckError(f"a completed handshake counted as tls_handshake: {closes}")


RUNS = {"axum": run_axum, "grpc": run_grpc, "https": run_https}
# What a run needs made first, in the program's directory; its result goes to the run.
PREPARE = {"https": prepare_https}


def main():
    crates = crates_of(README)
    if "--list" in sys.argv:
        for name, c in crates.items():
            print(name, c.get("run", ""))
        return
    for name, c in crates.items():
        if "run" in c and c["run"] not in RUNS:
            raise CheckError(f"README.md:{c['line']}: no run={c['run']} in {__file__}")
    base = tempfile.mkdtemp(prefix="clientgone-readme-")
    os.symlink(ROOT, os.path.join(base, "clientgone"))
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target"))
    env.pop("RUSTFLAGS", None)
    try:
        for name, c in crates.items():
            d = write_crate(base, name, c)
            print(f"readme: {name}: cargo build (README.md:{c['line']})", flush=True)
            subprocess.run(["cargo", "build", "--quiet"], cwd=d, env=env, check=True)
            lock = open(os.path.join(d, "Cargo.lock")).read()
            if 'name = "prometheus"' in lock and 'name = "protobuf"' not in lock:
                raise CheckError(f"{name}: prometheus built without its default protobuf feature")
            if "run" not in c:
                continue
            exe = os.path.join(env["CARGO_TARGET_DIR"], "debug", f"readme-{name}")
            print(f"readme: {name}: run", flush=True)
            prepared = PREPARE[c["run"]](d) if c["run"] in PREPARE else None
            proc = subprocess.Popen([exe], cwd=d)
            try:
                RUNS[c["run"]](*([prepared] if prepared is not None else []))
                if proc.poll() is not None:
                    raise CheckError(f"{name} exited early with {proc.returncode}")
            finally:
                proc.kill()
                proc.wait()
        print(f"readme: {len(crates)} programs built as a user builds them: {', '.join(crates)}")
    except subprocess.CalledProcessError as e:
        raise CheckError(f"{' '.join(e.cmd)} failed in {base} (left there to look at)") from None
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except CheckError as e:
        print(f"readme: {e}", file=sys.stderr)
        sys.exit(1)
