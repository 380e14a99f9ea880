# A tiny SMTP sink for the mail-flow tests (a smarthost stand-in): every accepted message is
# written to DIR/N.eml; recipients whose local part starts with "reject" get 550 at RCPT.
# usage: sink.py PORT DIR
import asyncio, os, sys

port, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
count = 0


async def session(reader, writer):
    global count
    def send(line):
        writer.write((line + "\r\n").encode())
    send("220 sink ESMTP")
    rcpts = []
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = line.decode("utf-8", "replace").strip()
        verb = cmd.split(" ")[0].upper()
        if verb in ("EHLO", "HELO"):
            send("250-sink\r\n250 8BITMIME")
        elif verb == "MAIL":
            rcpts = []
            send("250 OK")
        elif verb == "RCPT":
            addr = cmd.split(":", 1)[1].strip().strip("<>")
            if addr.lower().startswith("reject"):
                send("550 5.1.1 no such user here")
            else:
                rcpts.append(addr)
                send("250 OK")
        elif verb == "DATA":
            send("354 go on")
            await writer.drain()
            data = b""
            while True:
                l = await reader.readline()
                if not l or l == b".\r\n":
                    break
                if l.startswith(b".."):
                    l = l[1:]
                data += l
            count += 1
            path = os.path.join(out, "%d.eml" % count)
            with open(path + ".tmp", "wb") as f:
                f.write(("X-Sink-Rcpt: %s\r\n" % ",".join(rcpts)).encode() + data)
            os.rename(path + ".tmp", path)
            send("250 OK stored")
        elif verb == "QUIT":
            send("221 bye")
            await writer.drain()
            break
        else:
            send("250 OK")
        await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(session, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
