"""A small MCP server over stdio (JSON-RPC, one message a line) for the chat crate's tests.

Tools: add (a + b), fail (a result flagged as an error), reject (a JSON-RPC error),
crash (writes to stderr and exits), sleep (answers after `seconds`).
`--exit-at-start` makes it say why on stderr and exit before the handshake; `--fail-first PATH`
does so only when the file PATH does not exist yet (and creates it): it fails once, then works.
The environment variable DEMO_GREETING, when set, is the description of `add`.
"""

import json
import os
import sys
import time


def tool(name, description, properties, required):
    return {
        "name": name,
        "description": description,
        "inputSchema": {"type": "object", "properties": properties, "required": required},
    }


NUMBER = {"type": "number"}
TOOLS = [
    tool("add", os.environ.get("DEMO_GREETING", "Add two numbers."), {"a": NUMBER, "b": NUMBER}, ["a", "b"]),
    tool("fail", "Always fails.", {}, []),
    tool("reject", "Always refused by the protocol.", {}, []),
    tool("crash", "Ends the server.", {}, []),
    tool("sleep", "Waits.", {"seconds": NUMBER}, ["seconds"]),
]


def text(value, error=False):
    result = {"content": [{"type": "text", "text": value}]}
    if error:
        result["isError"] = True
    return result


def call(name, args):
    if name == "add":
        total = args["a"] + args["b"]
        return text(str(int(total) if float(total).is_integer() else total))
    if name == "fail":
        return text("the demo tool failed on purpose", error=True)
    if name == "reject":
        raise ValueError("reject is refused")
    if name == "crash":
        sys.stderr.write("demo server: crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    if name == "sleep":
        time.sleep(args["seconds"])
        return text("awake")
    raise ValueError(f"no tool {name}")


def reply(id_, result=None, error=None):
    message = {"jsonrpc": "2.0", "id": id_}
    if error is not None:
        message["error"] = error
    else:
        message["result"] = result
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main():
    if "--exit-at-start" in sys.argv:
        sys.stderr.write("demo server: no configuration found\n")
        sys.exit(2)
    if "--fail-first" in sys.argv:
        marker = sys.argv[sys.argv.index("--fail-first") + 1]
        if not os.path.exists(marker):
            open(marker, "w").close()
            sys.stderr.write("demo server: failing the first start on purpose\n")
            sys.exit(2)
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        method, id_ = message.get("method"), message.get("id")
        if id_ is None:
            continue  # a notification
        params = message.get("params") or {}
        if method == "initialize":
            reply(id_, {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "demo", "version": "1.0.0"},
            })
        elif method == "ping":
            reply(id_, {})
        elif method == "tools/list":
            reply(id_, {"tools": TOOLS})
        elif method == "tools/call":
            try:
                reply(id_, call(params["name"], params.get("arguments") or {}))
            except (ValueError, KeyError) as e:
                reply(id_, error={"code": -32602, "message": str(e)})
        else:
            reply(id_, error={"code": -32601, "message": f"unknown method {method}"})


main()
