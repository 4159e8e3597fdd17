"""The deploy commands of the CLI (export, build, deploy, status, down): argument handling and rich
output; the work is done by the functions of flownb.deploy."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import DeployError


def _quiet() -> None:
    """pika logs every connection at INFO: keep the CLI's output to flownb's own messages."""
    logging.getLogger("pika").setLevel(logging.WARNING)


@contextmanager
def _progress(con, title: str):
    _quiet()
    with con.status(title) as st:
        def say(msg: str) -> None:
            from rich.markup import escape
            st.update(f"{title}: {escape(msg)}")
            con.log(escape(msg))
        yield say


def export_cli(args, con) -> int:
    from .export import export
    res = export(args.source, args.output, params=dict(args.param or []), params_file=args.params_file,
                 target=args.target, flow_name=args.flow, broker_url=args.broker_url, image=args.image,
                 ingress_host=args.ingress_host, keda=args.keda, kernel_name=args.kernel,
                 schedules_dir=args.schedules, schedule_names=args.schedule, rabbitmq=args.rabbitmq)
    con.print(f"[green]exported[/green] flow '{res.flow.name}' to {res.out_dir}")
    for f in res.files:
        con.print(f"  {f.relative_to(res.out_dir)}")
    for w in res.warnings:
        con.print(f"[yellow]warning[/yellow]: {w}", soft_wrap=True, highlight=False)
    return 0


def build_cli(args, con) -> int:
    from .image import build_image
    with _progress(con, "build") as say:
        tag = build_image(Path(args.dir), base_image=args.base_image, tag=args.tag, progress=say)
    con.print(f"[green]built[/green] {tag}")
    return 0


def _volumes(specs: list[str]) -> dict[str, str]:
    out = {}
    for s in specs:
        host, sep, target = s.partition(":")
        if not sep or not host or not target:
            raise DeployError(f"--volume '{s}': expected HOST_PATH:CONTAINER_PATH")
        out[str(Path(host).resolve())] = target
    return out


def deploy_cli(args, con) -> int:
    from .docker import deploy
    with _progress(con, "deploy") as say:
        res = deploy(Path(args.dir), broker_url=args.broker_url, network=args.network,
                     base_image=args.base_image, build=not args.no_build, volumes=_volumes(args.volume),
                     progress=say)
    con.print(f"[green]deployed[/green] flow '{res.flow}' ({res.image}): {len(res.containers)} container(s)")
    return 0


def status_cli(args, con) -> int:
    from rich.table import Table

    from .docker import status
    _quiet()
    st = status(Path(args.dir), broker_url=args.broker_url)
    if args.json:
        con.print_json(json.dumps(st))
        return 0
    t = Table(title=f"flow '{st['flow']}': containers")
    t.add_column("container", overflow="fold", no_wrap=False, min_width=20)
    for c in ("step", "state", "restarts", "exit code", "started"):
        t.add_column(c, overflow="fold")
    for c in st["containers"]:
        colour = "green" if c["state"] == "running" else "red"
        t.add_row(c["name"], c["step"] or c["role"], f"[{colour}]{c['state']}[/{colour}]", str(c["restarts"]),
                  str(c["exit_code"]), c["started_at"][:19])
    con.print(t)
    if st["queues"] is not None:
        q = Table(title="queues")
        for c in ("step", "ready", "retry", "dead"):
            q.add_column(c)
        for step, row in st["queues"].items():
            q.add_row(step, str(row.get("ready", 0)), str(row.get("retry", "-")), str(row.get("dead", 0)))
        con.print(q)
    else:
        con.print(f"[yellow]queue depths unavailable:[/yellow] {st['queues_error']}")
    return 0


def down_cli(args, con) -> int:
    from .docker import down
    with _progress(con, "down") as say:
        removed = down(Path(args.dir), keep_broker=args.keep_broker, volumes=args.volumes, progress=say)
    con.print(f"removed {len(removed)} container(s)")
    return 0


def add_parser(sub: Any) -> None:
    """The deploy commands: export, build, deploy, status, down."""
    p = sub.add_parser("export", help="run a notebook with papermill (or read a spec) and write a deployment")
    p.add_argument("source", metavar="NOTEBOOK|SPEC", help="a notebook (.ipynb) or a flow.yaml")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a notebook parameter (a flow parameter for a spec); repeatable")
    p.add_argument("-f", "--params-file", default=None, help="YAML file of name: value parameters")
    p.add_argument("--target", choices=["compose", "k8s", "all"], default="all")
    p.add_argument("--flow", default=None, help="the flow to export when the notebook displays several")
    p.add_argument("--broker-url", default=None, help="use this RabbitMQ instead of deploying one")
    p.add_argument("--image", default=None, help="image name (default flownb-<flow>:latest)")
    p.add_argument("--ingress-host", default=None, help="Kubernetes: add an Ingress for a webhook trigger")
    p.add_argument("--keda", action="store_true", help="Kubernetes: a KEDA ScaledObject per action step")
    p.add_argument("--rabbitmq", choices=["single", "cluster", "operator"], default=None,
                   help="Kubernetes, without --broker-url: the broker to write — one node, a 3-node cluster "
                        "(StatefulSet, peer discovery) or a RabbitmqCluster for the cluster operator "
                        "(default: cluster for quorum queues, single for 'topology: classic')")
    p.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebook's)")
    p.add_argument("--schedules", default=None, metavar="STATE_DIR",
                   help="Kubernetes: turn the schedules stored there ('flownb schedule add') into CronJobs")
    p.add_argument("--schedule", action="append", default=None, metavar="NAME",
                   help="with --schedules: export only this schedule (repeatable)")
    p.add_argument("-o", "--output", required=True, help="the deployment directory to write")
    p.set_defaults(handler=_with_console(export_cli))


    p = sub.add_parser("build", help="build the worker image of an exported directory (wheelhouse + docker)")
    p.add_argument("dir", help="a directory written by 'flownb export'")
    p.add_argument("--base-image", default=None, help="default python:3.11-slim")
    p.add_argument("--tag", default=None)
    p.set_defaults(handler=_with_console(build_cli))


    p = sub.add_parser("deploy", help="build and start an exported flow's containers (Docker)")
    p.add_argument("dir", help="a directory written by 'flownb export'")
    p.add_argument("--broker-url", default=None, help="use this RabbitMQ instead of starting one")
    p.add_argument("--network", default="host", help="Docker network mode of the containers")
    p.add_argument("--base-image", default=None)
    p.add_argument("--no-build", action="store_true", help="use the image built before")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CONTAINER",
                   help="bind-mount a host path into every worker (repeatable)")
    p.set_defaults(handler=_with_console(deploy_cli))


    p = sub.add_parser("status", help="containers and queue depths of a deployed flow")
    p.add_argument("dir")
    p.add_argument("--broker-url", default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(handler=_with_console(status_cli))


    p = sub.add_parser("down", help="stop and remove a deployed flow's containers")
    p.add_argument("dir")
    p.add_argument("--keep-broker", action="store_true")
    p.add_argument("--volumes", action="store_true", help="also remove the broker's data volume")
    p.set_defaults(handler=_with_console(down_cli))


def _with_console(fn):
    def run(args) -> int:
        from .._cli import console
        return fn(args, console())
    return run
