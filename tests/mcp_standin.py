"""An MCP server of a shop's order system, built with the official ``mcp`` package (``MCPServer``) and served over
streamable HTTP, run as a child process by the MCP tool tests (``python -m tests.mcp_standin --port N``).
``order_status`` answers from a small table; ``cancel_order`` exists so a test can show the allow-list keeps it
from the model; every call is printed (the child's log)."""
from __future__ import annotations

import argparse

from mcp.server.mcpserver import MCPServer

ORDERS = {"AZ-1042": "shipped on Monday by courier; arrives Thursday", "AZ-7": "being packed"}
server = MCPServer("shop-orders")


@server.tool()
def order_status(order_id: str) -> str:
    """Where an order of the shop is (its id, e.g. AZ-1042)."""
    print(f"order_status {order_id}", flush=True)
    return f"Order {order_id}: {ORDERS.get(order_id, 'not found')}"


@server.tool()
def cancel_order(order_id: str) -> str:
    """Cancel an order."""
    print(f"cancel_order {order_id}", flush=True)
    return f"Order {order_id} cancelled"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
