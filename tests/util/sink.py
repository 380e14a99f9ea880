# A tiny SMTP sink for the mail-flow tests (a smarthost stand-in): every accepted message is
# written to DIR/N.eml; recipients whose local part starts with "reject" get 550 at RCPT.
# usage: sink.py PORT DIR [--starttls CERT KEY | --tls CERT KEY] [--auth USER:PASSWORD]
#   --starttls: STARTTLS offered and required before MAIL; --tls: implicit TLS;
#   --auth: AUTH PLAIN/LOGIN required before MAIL (the user goes into X-Sink-Auth).
import asyncio, base64, os, ssl, sys

port, out = int(sys.argv[1]), sys.argv[2]
opts = sys.argv[3:]
mode, ctx, auth = "none", None, None
while opts:
    if opts[0] in ("--starttls", "--tls"):
        mode = opts[0][2:]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(opts[1], opts[2])
        opts = opts[3:]
    elif opts[0] == "--auth":
        auth = opts[1]
        opts = opts[2:]
    else:
        sys.exit("sink.py: unknown option " + opts[0])
os.makedirs(out, exist_ok=True)
count = 0


async def session(reader, writer):
    global count
    def send(line):
        writer.write((line + "\r\n").encode())
    send("220 sink ESMTP")
    rcpts = []
    secure = mode == "tls"
    user = None
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = line.decode("utf-8", "replace").strip()
        verb = cmd.split(" ")[0].upper()
        if verb in ("EHLO", "HELO"):
            ext = ["8BITMIME"]
            if mode == "starttls" and not secure:
                ext.append("STARTTLS")
            if auth and secure:
                ext.append("AUTH PLAIN LOGIN")
            lines = ["sink"] + ext
            send("\r\n".join("250-" + l for l in lines[:-1]) + "\r\n250 " + lines[-1])
        elif verb == "STARTTLS" and mode == "starttls" and not secure:
            send("220 go ahead")
            await writer.drain()
            await writer.start_tls(ctx)
            secure = True
        elif verb == "AUTH" and auth and secure:
            parts = cmd.split(" ")
            if parts[1].upper() == "PLAIN":
                if len(parts) > 2:
                    blob = parts[2]
                else:
                    send("334 ")
                    await writer.drain()
                    blob = (await reader.readline()).decode().strip()
                _, u, pw = base64.b64decode(blob).decode().split("\0")
            else:
                send("334 VXNlcm5hbWU6")
                await writer.drain()
                u = base64.b64decode((await reader.readline()).strip()).decode()
                send("334 UGFzc3dvcmQ6")
                await writer.drain()
                pw = base64.b64decode((await reader.readline()).strip()).decode()
            if u + ":" + pw == auth:
                user = u
                send("235 2.7.0 OK")
            else:
                send("535 5.7.8 bad credentials")
        elif verb == "MAIL" and ((mode == "starttls" and not secure) or (auth and user is None)):
            send("530 5.7.0 TLS and AUTH first")
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
                head = "X-Sink-Rcpt: %s\r\n" % ",".join(rcpts)
                if secure:
                    head += "X-Sink-TLS: %s\r\n" % mode
                if user:
                    head += "X-Sink-Auth: %s\r\n" % user
                f.write(head.encode() + data)
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
    server = await asyncio.start_server(session, "127.0.0.1", port,
                                        ssl=ctx if mode == "tls" else None)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
