"""The HTTP service and its API keys: serve, keys create / list / revoke."""
from __future__ import annotations

import importlib.util

import click

from cli import render
from cli.errors import CliError, handle_errors
from cli.main import cli, open_gallery, settings_of

json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs an API key to exist (keys create).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes; each loads the models once and they share the gallery.")
@click.option("--max-images", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Images per request.")
@click.option("--max-image-mb", type=click.FloatRange(0.01, 1024), default=10.0, show_default=True,
              help="Size of one uploaded image.")
@click.option("--max-megapixels", type=click.FloatRange(0.01, 89), default=40.0, show_default=True,
              help="Pixel count of one uploaded image.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="Seconds a request may take, upload included (then 504).")
@click.option("--no-batching", is_flag=True, help="Run each request's detector and embedder calls on their own "
                                                  "instead of joining concurrent ones.")
@click.option("--batch-wait-ms", type=click.FloatRange(0, 1000), default=5.0, show_default=True,
              help="How long a call waits for others to join its batch.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Photos (detector) or crops (embedder) per joined call.")
@click.option("--max-queue", type=click.IntRange(1, 100_000), default=64, show_default=True,
              help="Calls waiting per model, and requests at once per worker; beyond: 503 with Retry-After.")
@click.pass_context
@handle_errors
def serve(ctx, host, port, workers, max_images, max_image_mb, max_megapixels, timeout_s, no_batching, batch_wait_ms,
          max_batch, max_queue):
    """Serve the HTTP API (extra 'server'): identify, verify, enroll, people, forget, models; docs at /docs."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise CliError("the service needs FastAPI and uvicorn: pip install 'facegallery[server]'")
    from gallery.recognize.batching import BatchOptions
    from server.config import MB, ServerOptions
    from server.launch import serve as run_server

    options = ServerOptions(
        max_image_bytes=int(max_image_mb * MB), max_images=max_images, max_pixels=int(max_megapixels * 1e6),
        request_timeout_s=timeout_s, batching=not no_batching, max_in_flight=max_queue,
        batch=BatchOptions(max_batch=max_batch, max_wait_ms=batch_wait_ms, max_queue=max_queue))
    settings = settings_of(ctx).with_(progress=False)
    click.echo(f"facegallery API: http://{host}:{port}/docs (gallery {settings.home}, {workers} worker(s)); "
               f"Ctrl+C stops it", err=True)
    run_server(settings, options, host=host, port=port, workers=workers)


@cli.group()
def keys():
    """API keys of the HTTP service: create (shown once), list, revoke."""


@keys.command("create")
@click.argument("name")
@click.option("--read-only", is_flag=True, help="Read scope only: identify, verify, people, models.")
@json_option
@click.pass_context
@handle_errors
def keys_create(ctx, name, read_only, as_json):
    """Create an API key NAME and print its token (shown this once; only its hash is stored)."""
    from gallery.manage.keys import create_key

    with open_gallery(ctx) as g:
        created = create_key(g, name, read_only=read_only)
    if as_json:
        return render.emit_json(created.to_dict())
    click.echo(f"Created API key {created.key.name!r} (scope {created.key.scope}). Its token, shown only now:",
               err=True)
    click.echo(created.token)


@keys.command("list")
@json_option
@click.pass_context
@handle_errors
def keys_list(ctx, as_json):
    """List API keys (never their tokens), revoked ones included."""
    from gallery.manage.keys import list_keys

    with open_gallery(ctx) as g:
        rows = list_keys(g)
    if as_json:
        return render.emit_json({"keys": [k.to_dict() for k in rows]})
    click.echo(render.table(["name", "scope", "token starts", "created", "revoked"],
                            [[k.name, k.scope, k.prefix + "...", k.created_at, k.revoked_at or ""] for k in rows]))


@keys.command("revoke")
@click.argument("name")
@json_option
@click.pass_context
@handle_errors
def keys_revoke(ctx, name, as_json):
    """Revoke the active API key NAME (every server process refuses it from the next request on)."""
    from gallery.manage.keys import revoke_key

    with open_gallery(ctx) as g:
        info = revoke_key(g, name)
    if as_json:
        return render.emit_json(info.to_dict())
    click.echo(f"Revoked API key {info.name!r}.")
