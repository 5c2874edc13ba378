"""Chat with the deployed model in a browser, through the Prompt flow (runs INSIDE
.venv-promptflow): `pf flow serve`, made to work.

The tutorial's last step is `pf flow serve --source ./ --port 8080 --host localhost`, then
chatting in the browser. As released, promptflow 1.18.x cannot do that here:

1. its chat page (`GET /`) answers 400: `static_web_blueprint.py` calls `os.environ` without
   `import os` (a NameError, turned into an error response);
2. `pf flow serve` takes connections from promptflow's local connection store, whose secrets
   need an OS keyring, absent on a headless Linux machine (and a stored key is a key on disk);
3. the serving app's other way in, a connection-provider callable, calls
   `connection.to_execution_connection_dict()`, a method the connection classes no longer have
   (it is `_to_execution_connection_dict` now): an AttributeError at start-up.

This script starts the very same serving app (`promptflow.core._serving.app.create_app`, the
flask engine `pf flow serve` uses) with promptflow's own chat page, fixing all three: it
supplies the missing `os` to the blueprint module before the app is built, and it hands the
app the endpoint connection in memory, built from the environment, through a provider
callable whose connection also answers to the old method name.
Everything else, `/score`, `/swagger.json`, `/health`, is promptflow's, unchanged.

    FINETUNE_PHI_ENDPOINT_KEY=... FINETUNE_PHI_ENDPOINT_URL=http://.../score \\
        .venv-promptflow/bin/python promptflow_app/serve.py --port 8080

`finetune-phi chat --browser` runs this with the profile's endpoint URL and key. It binds
127.0.0.1 by default: the page needs no key, so anyone who can reach it can use the endpoint.
The chat page sends only the question and the history; the flow's other inputs are fixed when
the server starts (see `chat_only_flow`): their defaults, or what `--set INPUT=VALUE` says,
e.g. `--set do_sample=false` for greedy, reproducible answers, or `--set deployment=green` to
chat with one deployment directly.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import pf_runtime

DEFAULT_PORT = 8080  # the tutorial's


def chat_only_flow(values: dict[str, Any]) -> Path:
    """A temporary copy of the flow whose only inputs are the chat's (question, history).

    promptflow's chat page shows every other flow input as a required, empty field (it ignores
    defaults), so a person would have to type `deployment`, `temperature`... before asking
    anything. The copy binds each such input to a fixed value instead: the one given in
    `values`, else the input's default. The flow itself is unchanged.
    """
    from ruamel.yaml import YAML  # promptflow's own YAML library; keeps comments and order

    yaml = YAML()
    flow = yaml.load((pf_runtime.FLOW_DIR / "flow.dag.yaml").read_text(encoding="utf-8"))
    inputs = flow["inputs"]
    bound: dict[str, Any] = {}
    for name in list(inputs):
        spec = inputs[name]
        if spec.get("is_chat_input") or spec.get("is_chat_history"):
            if name in values:
                raise SystemExit(f"error: --set {name}: the chat page sends this one")
            continue
        bound[name] = values.get(name, spec.get("default"))
        del inputs[name]
    unknown = sorted(set(values) - set(bound))
    if unknown:
        raise SystemExit(f"error: --set {unknown[0]}: the flow has no such input")
    for node in flow["nodes"]:
        for key, value in list(node.get("inputs", {}).items()):
            for name, fixed in bound.items():
                if value == f"${{inputs.{name}}}":
                    node["inputs"][key] = fixed
    # The folder's name is the flow's name on the chat page.
    copy = Path(tempfile.mkdtemp(prefix="finetune-phi-")) / "finetune-phi-chat"
    copy.mkdir()
    atexit.register(shutil.rmtree, copy.parent, True)
    shutil.copy2(pf_runtime.FLOW_DIR / "call_endpoint.py", copy / "call_endpoint.py")
    with (copy / "flow.dag.yaml").open("w", encoding="utf-8") as handle:
        yaml.dump(flow, handle)
    return copy


def parse_defaults(items: list[str]) -> dict[str, Any]:
    """`name=value` pairs; values as JSON where they parse (`false`, `64`), text otherwise."""
    result: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: --set {item!r}: expected NAME=VALUE")
        try:
            result[name] = json.loads(raw)
        except json.JSONDecodeError:
            result[name] = raw
    return result


def fix_chat_page() -> None:
    """promptflow 1.18.x: the chat page's view uses `os` without importing it (GET / -> 400)."""
    from promptflow.core._serving.v1.blueprint import static_web_blueprint

    if not hasattr(static_web_blueprint, "os"):
        static_web_blueprint.os = os  # type: ignore[attr-defined]


class _ServableConnection:
    """The connection as the serving app's provider path expects it (see defect 3 above)."""

    def __new__(cls, connection: Any) -> Any:
        if not hasattr(connection, "to_execution_connection_dict"):
            # An instance attribute, not a subclass: the connection's class stays promptflow's
            # own, which the app checks with isinstance.
            object.__setattr__(
                connection,
                "to_execution_connection_dict",
                connection._to_execution_connection_dict,
            )
        return connection


def create_app(endpoint_url: str, key: str, flow_dir: Path) -> Any:
    """promptflow's serving app for the flow in `flow_dir`, the endpoint connection in memory."""
    fix_chat_page()
    from promptflow.core._serving.app import create_app as create_serving_app

    connection = _ServableConnection(pf_runtime.make_connection(endpoint_url, key))
    # The serving app reads the flow from the project path (and the chat page's title from it).
    os.environ["PROMPTFLOW_PROJECT_PATH"] = str(flow_dir)
    return create_serving_app(
        engine="flask",
        flow_file_path=flow_dir / "flow.dag.yaml",
        connection_provider=lambda: [connection],
        environment_variables={},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get(pf_runtime.URL_ENV, ""),
        help=f"the endpoint's scoring URL (default: ${pf_runtime.URL_ENV})",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="INPUT=VALUE",
        help="fix a flow input, e.g. do_sample=false or deployment=green (repeatable)",
    )
    parser.add_argument("--threads", type=int, default=4, help="server worker threads")
    args = parser.parse_args(argv)
    if not args.endpoint_url:
        parser.error(f"the endpoint URL is needed: --endpoint-url or ${pf_runtime.URL_ENV}")

    key = pf_runtime.endpoint_key()
    # Stopped with SIGTERM (by `finetune-phi chat --browser`): exit normally, so the temporary
    # promptflow home and flow copy are removed (atexit does not run on a default SIGTERM).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pf_runtime.prepare_home()
    flow_dir = chat_only_flow(parse_defaults(args.set))
    app = create_app(args.endpoint_url, key, flow_dir)

    from waitress import serve  # promptflow's dependency; a production WSGI server

    print(f"chat page: http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    serve(app, host=args.host, port=args.port, threads=args.threads, ident="finetune-phi")
    return 0


if __name__ == "__main__":
    sys.exit(main())
