"""Writes the fuzz targets' seed inputs (fuzz/seeds/TARGET/NAME): one real
example of each input kind, for libFuzzer to mutate from. Run it again after
changing it: `python3 fuzz/seeds/make_seeds.py`. The GGUF seed is the
tests' tiny llama model (tests/clients/python/tiny_gguf.py, which needs
`pip install gguf numpy`) at its smallest sizes, under libFuzzer's input
limit (`MAX_LEN` in xtask/src/fuzz.rs).
"""
import pathlib
import ssl
import struct
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests/clients/python"))
import tiny_gguf  # noqa: E402


def put(target, name, data):
    d = HERE / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b)//2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def dns_query(name, qtype=1, edns=False):
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", qtype, 1)
    if edns:
        q += b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return q


def dhcp(msg_type, requested=None):
    mac = bytes.fromhex("525400123456")
    p = struct.pack("!BBBBIHH", 1, 1, 6, 0, 0xDEADBEEF, 0, 0x8000)
    p += b"\0" * 16 + mac + b"\0" * 10 + b"\0" * 192
    p += bytes([99, 130, 83, 99])
    p += bytes([53, 1, msg_type])
    if requested:
        p += bytes([50, 4]) + bytes(requested)
    p += bytes([55, 3, 1, 3, 6, 255])
    return p


def ipv4_udp_frame(dport, payload, src=(0, 0, 0, 0), dst=(255, 255, 255, 255)):
    udp_len = 8 + len(payload)
    pseudo = bytes(src) + bytes(dst) + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", 68 if dport == 67 else 40000, dport, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, bytes(src), bytes(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    eth = bytes.fromhex("ffffffffffff" "525400123456" "0800")
    return eth + ip + udp


def tcp_syn_frame(dport):
    src, dst = (10, 0, 2, 15), (198, 18, 0, 1)
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = bytes(src) + bytes(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, bytes(src), bytes(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return bytes.fromhex("525400000001" "525400123456" "0800") + ip + tcp


def client_hello(host):
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def with_extension(record, kind, data):
    """A TLS ClientHello record with one more extension, lengths fixed."""
    hs = record[5:]
    body = hs[4:]
    at = 2 + 32
    at += 1 + body[at]  # legacy_session_id
    at += 2 + int.from_bytes(body[at:at + 2], "big")  # cipher_suites
    at += 1 + body[at]  # compression methods
    exts = body[at + 2:at + 2 + int.from_bytes(body[at:at + 2], "big")]
    exts += struct.pack("!HH", kind, len(data)) + data
    body = body[:at] + struct.pack("!H", len(exts)) + exts
    hs = bytes([1]) + len(body).to_bytes(3, "big") + body
    return record[:3] + struct.pack("!H", len(hs)) + hs


# guest_frame: a mode byte (odd: checksums are rewritten), then the frame.
put("guest_frame", "dhcp-discover", b"\0" + ipv4_udp_frame(67, dhcp(1)))
put("guest_frame", "dns-query", b"\0" + ipv4_udp_frame(53, dns_query("example.com"), (10, 0, 2, 15), (10, 0, 2, 2)))
put("guest_frame", "tcp-syn-443", b"\0" + tcp_syn_frame(443))
put("dns", "a-query", dns_query("api.openai.com"))
put("dns", "aaaa-edns", dns_query("example.com", qtype=28, edns=True))
put("dhcp", "discover", dhcp(1))
put("dhcp", "request", dhcp(3, (10, 0, 2, 15)))
# sniff: a byte that says where a prefix is cut, then the first bytes.
put("sniff", "tls-client-hello", b"\x80" + client_hello("api.example.com"))
put("sniff", "http-get", b"\x40" + b"GET http://example.com/a HTTP/1.1\r\nHost: Example.COM:80\r\nAccept: */*\r\n\r\n")
# The heads the gateway refuses since issue 20: TLS with Encrypted Client
# Hello (a GREASE-shaped extension 0xfe0d), and HTTP ends of line a lenient
# server reads another way (bare LF).
put("sniff", "tls-ech", b"\x80" + with_extension(client_hello("api.example.com"), 0xFE0D, bytes(range(32))))
put("sniff", "http-bare-lf", b"\x40" + b"GET / HTTP/1.1\nHost: example.com\n\n")
# http_stream: a byte for the read size, then the stream.
put("http_stream", "pipelined", b"\x07" + b"POST /v1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"
    + b"GET / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
# An upgrade the server has not granted yet, then a second request.
put("http_stream", "upgrade", b"\x05" + b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    + b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
put("http_stream", "chunked-body", b"\x02" + b"PUT /x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
# tool_calls: a byte for the family (its index in Family::ALL), a byte for
# the chunk size, then model output.
families = ["hermes", "qwen3_coder", "glm45", "harmony", "kimi_k2", "mistral", "llama3_json", "deepseek", "plain"]
outputs = {
    "hermes": '<think>\nThe user wants weather.\n</think>\n\nLet me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>',
    "qwen3_coder": "I'll write it.\n<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/main.rs\n</parameter>\n<parameter=mode>\n420\n</parameter>\n</function>\n</tool_call>",
    "glm45": "<think>Need the weather.</think>\nChecking.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Beijing</arg_value>\n</tool_call>",
    "harmony": '<|channel|>analysis<|message|>Use the tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location":"SF"}<|call|>',
    "kimi_k2": '<think>plan</think>Sure.<|tool_calls_section_begin|>\n<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|>\n<|tool_calls_section_end|>',
    "mistral": 'Let me check.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[CALL_ID]a1B2c3D4e[ARGS]{}',
    "llama3_json": '<|python_tag|>{"name": "get_time", "parameters": {"x": [1, "}"]}}',
    "deepseek": '<think>\nreason\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Tokyo"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    "plain": "Just text, <b>with</b> tags.",
}
for i, family in enumerate(families):
    put("tool_calls", family, bytes([i, 3]) + outputs[family].encode())
# sse: a byte for the read size, then an upstream's streamed body.
put("sse", "chat-stream", b"\x05" + b": keep-alive\r\n\r\n"
    + 'data: {"choices":[{"delta":{"content":"h\u00e9llo"}}]}\r\n\r\n'.encode()
    + b"event: response.output_text.delta\ndata: {\"delta\":\"a\"}\ndata: more\n\ndata: [DONE]\n\n")
# config_disk: what the supervisor writes for a VM.
json_text = b'{"name":"demo","shares":[{"tag":"share0","path":"/work","readonly":true}]}'
disk = b"CLAWPEN-CONFIG v1\n" + str(len(json_text)).encode() + b"\n" + json_text
put("config_disk", "vm", disk + b"\0" * (-len(disk) % 4096))
# gguf: a whole model the local engine loads (embedding 8, one layer).
with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "tiny.gguf"
    tiny_gguf.main(str(path), ["8", "1", "16"])
    put("gguf", "tiny-llama", path.read_bytes())
