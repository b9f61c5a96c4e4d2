#!/usr/bin/env bash
# File sharing throughput: a release server on loopback, one XMPP login for each slot (python3,
# plain TCP with PLAIN on loopback only), then curl PUTs and GETs a random file over HTTPS and
# checks it comes back byte for byte. Usage: scripts/upload_bench.sh [MiB] [runs]
set -euo pipefail
MIB=${1:-100}
RUNS=${2:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cat > "$WORK/r.toml" <<TOML
[server]
domain = "localhost"
data_dir = "$WORK/data"
log_level = "warn"
[c2s]
listen = "127.0.0.1:36222"
direct_tls_listen = ""
require_encryption = false
[http]
listen = "127.0.0.1:36443"
[tls]
cert = "$WORK/c.crt"
key = "$WORK/c.key"
[upload]
max_file_size = 4294967296
quota = 42949672960
TOML
./target/release/rookery user add bench@localhost --password benchpass --config "$WORK/r.toml" >/dev/null
./target/release/rookery serve --config "$WORK/r.toml" 2>"$WORK/log" &
PID=$!
for _ in $(seq 50); do grep -q ready "$WORK/log" && break; sleep 0.1; done
head -c $((MIB * 1048576)) /dev/urandom > "$WORK/file"
SIZE=$(stat -c %s "$WORK/file")
slot() {
  python3 - "$SIZE" "$1" <<'PY'
import base64, re, socket, sys
size, name = sys.argv[1], sys.argv[2]
s = socket.create_connection(("127.0.0.1", 36222))
def until(pattern):
    buf = b""
    while not re.search(pattern.encode(), buf):
        data = s.recv(65536)
        if not data:
            sys.exit("connection closed: " + buf.decode())
        buf += data
    return buf.decode()
opening = ("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
           "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
s.sendall(opening.encode()); until("</stream:features>")
plain = base64.b64encode(b"\0bench\0benchpass").decode()
s.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>".encode())
if "failure" in until("success|failure"):
    sys.exit("login failed")
s.sendall(opening.encode()); until("</stream:features>")
s.sendall(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"); until("</iq>")
s.sendall((f"<iq type='get' id='s' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' "
           f"filename='{name}' size='{size}' content-type='application/octet-stream'/></iq>").encode())
reply = until("</iq>")
print(re.search(r"<put url='([^']+)'", reply).group(1))
print(re.search(r"<header name='Authorization'>([^<]+)<", reply).group(1))
PY
}
CURL=(curl -sS --cacert "$WORK/c.crt" --resolve localhost:36443:127.0.0.1)
for run in $(seq "$RUNS"); do
  mapfile -t got < <(slot "run$run.bin")
  "${CURL[@]}" -o /dev/null -T "$WORK/file" -H "Authorization: ${got[1]}" \
    -H "Content-Type: application/octet-stream" \
    -w "run $run PUT %{http_code} %{time_total} s %{speed_upload} B/s\n" "${got[0]}"
  "${CURL[@]}" -o "$WORK/back" -w "run $run GET %{http_code} %{time_total} s %{speed_download} B/s\n" "${got[0]}"
  cmp -s "$WORK/file" "$WORK/back" && echo "run $run: byte-identical"
done
echo "server RSS after the runs: $(ps -o rss= -p "$PID") KiB"
