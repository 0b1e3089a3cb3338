#!/usr/bin/env python3
"""A tiny DNS server for the static binary's resolver test.

Answers UDP A queries for names under --zone with --answer (one record, TTL
5), and NXDOMAIN for everything else (AAAA queries for the zone get an empty
answer). Records every query name as a line in --log. Listens on
--addr:--port (default 127.0.0.1:53); prints READY once bound; stops on
SIGTERM.
"""
import argparse
import signal
import socket
import struct
import sys


def parse_name(packet, offset):
    labels = []
    while True:
        length = packet[offset]
        if length == 0:
            return ".".join(labels), offset + 1
        if length & 0xC0:
            raise ValueError("compressed names are not expected in a query")
        labels.append(packet[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--zone", required=True)
    ap.add_argument("--answer", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    zone = args.zone.lower().strip(".")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.addr, args.port))
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("READY", flush=True)
    while True:
        packet, peer = sock.recvfrom(512)
        if len(packet) < 12:
            continue
        ident, _flags, qdcount = struct.unpack(">HHH", packet[:6])
        if qdcount != 1:
            continue
        try:
            name, end = parse_name(packet, 12)
        except (ValueError, IndexError):
            continue
        qtype, _qclass = struct.unpack(">HH", packet[end:end + 4])
        question = packet[12:end + 4]
        with open(args.log, "a") as f:
            f.write("%s %d\n" % (name, qtype))
        lname = name.lower().strip(".")
        in_zone = lname == zone or lname.endswith("." + zone)
        answers = b""
        ancount = 0
        if in_zone and qtype == 1:
            answers = (b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4)
                       + socket.inet_aton(args.answer))
            ancount = 1
        rcode = 0 if in_zone else 3
        header = struct.pack(">HHHHHH", ident, 0x8180 | rcode, 1, ancount, 0, 0)
        sock.sendto(header + question + answers, peer)


if __name__ == "__main__":
    main()
