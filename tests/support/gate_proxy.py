#!/usr/bin/env python3
"""TCP proxy with a gate the test opens: lets a test hold a transfer at a
known point and release it when it is ready, so "the import is mid-transfer"
is an observed state, never a matter of speed.  Python 3 stdlib only,
127.0.0.1 only, exits by itself after --max-seconds.

    gate_proxy.py --upstream 127.0.0.1:PORT --release WORK/open \
        [--hold-after BYTES [--hold-times K]] [--hold-from-connection N] \
        --port 0 --port-file WORK/gate.port --log WORK/gate.log

  --hold-after BYTES       the first K connections (--hold-times, default 1)
                           that carry BYTES server->client bytes stop there,
                           socket open, until the release file exists; then
                           the rest flows
  --hold-from-connection N connection N (1-based) and every later one wait
                           for the release file before they reach the
                           upstream (their request is not even sent)
  --release FILE           the gate opens once FILE exists (the test creates it)
  --log FILE               one line per event: "conn C open", "conn C held
                           after B bytes", "conn C waiting", "conn C released",
                           "conn C closed after B bytes"
"""
import argparse
import asyncio
import os
import sys

CHUNK = 64 * 1024


class Gate:
    def __init__(self, args):
        self.args = args
        self.connections = 0
        self.holds = 0
        self.log = open(args.log, "a", buffering=1) if args.log else sys.stderr
        host, _, port = args.upstream.rpartition(":")
        self.upstream = (host, int(port))

    def note(self, text):
        self.log.write(text + "\n")

    async def released(self):
        while not os.path.exists(self.args.release):
            await asyncio.sleep(0.01)

    async def handle(self, client_reader, client_writer):
        self.connections += 1
        conn = self.connections
        self.note("conn %d open" % conn)
        if self.args.hold_from_connection and conn >= self.args.hold_from_connection:
            self.note("conn %d waiting" % conn)
            await self.released()
            self.note("conn %d released" % conn)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        sent = await asyncio.gather(
            self.pump(client_reader, up_writer, None),
            self.pump(up_reader, client_writer, conn),
            return_exceptions=True,
        )
        down = sent[1] if isinstance(sent[1], int) else -1
        self.note("conn %d closed after %d bytes" % (conn, down))

    async def pump(self, reader, writer, conn):
        """Copies reader to writer; `conn` set: the server->client side,
        where the hold applies."""
        count = 0
        may_hold = conn is not None and self.args.hold_after is not None
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if may_hold and count + len(data) >= self.args.hold_after:
                    if self.args.hold_times == 0 or self.holds < self.args.hold_times:
                        self.holds += 1
                        cut = self.args.hold_after - count
                        writer.write(data[:cut])
                        await writer.drain()
                        count += cut
                        data = data[cut:]
                        self.note("conn %d held after %d bytes" % (conn, count))
                        await self.released()
                        self.note("conn %d released" % conn)
                    may_hold = False
                writer.write(data)
                await writer.drain()
                count += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass
        return count


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True)
    p.add_argument("--release", required=True)
    p.add_argument("--hold-after", type=int)
    p.add_argument("--hold-times", type=int, default=1)
    p.add_argument("--hold-from-connection", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--log")
    p.add_argument("--max-seconds", type=float, default=300.0)
    args = p.parse_args()
    gate = Gate(args)
    server = await asyncio.start_server(gate.handle, "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    print("PORT=%d" % port, flush=True)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, args.port_file)
    await asyncio.sleep(args.max_seconds)


if __name__ == "__main__":
    asyncio.run(main())
