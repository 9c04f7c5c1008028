#!/usr/bin/env python3
"""Writes an OCI image archive from files on the host, byte for byte reproducibly.

    oci_image.py --output FILE --name NAME:TAG --file SRC:DST[:MODE] ... [--dir DST ...]
                 [--user UID:GID] [--entrypoint JSON] [--cmd JSON] [--port N] [--label K=V ...]

One layer (an uncompressed tar: entries sorted, owner 0:0, mtime SOURCE_DATE_EPOCH or 0, no
extended attributes), a config, a manifest and an index, laid out as an OCI image layout with a
Docker `manifest.json` beside it, so `ctr images import`, `kind load image-archive`,
`docker load` and `podman load` all accept the same file. Only the standard library is used.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = EPOCH
    info.size = len(data) if data is not None else 0
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def layer(files: list[tuple[str, str, int]], dirs: list[str]) -> bytes:
    """The layer tar: every parent directory, then the files, sorted by path."""
    entries: dict[str, tuple[bytes | None, int]] = {}
    for d in dirs:
        entries[d.strip("/") + "/"] = (None, 0o755)
    for src, dst, mode in files:
        with open(src, "rb") as f:
            entries[dst.strip("/")] = (f.read(), mode)
    for path in list(entries):
        parts = path.rstrip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            entries.setdefault("/".join(parts[:i]) + "/", (None, 0o755))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            data, mode = entries[path]
            if path.endswith("/"):
                add(tar, path.rstrip("/"), None, mode, tarfile.DIRTYPE)
            else:
                add(tar, path, data, mode)
    return buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True)
    p.add_argument("--name", required=True, help="repository:tag, e.g. residency-operator:0.1.0")
    p.add_argument("--file", action="append", default=[], help="SRC:DST[:OCTAL_MODE]")
    p.add_argument("--dir", action="append", default=[], help="an empty directory DST")
    p.add_argument("--user", default="65532:65532")
    p.add_argument("--entrypoint", default="[]")
    p.add_argument("--cmd", default="[]")
    p.add_argument("--port", action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    a = p.parse_args()

    files = []
    for spec in a.file:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            print(f"oci_image.py: --file {spec}: expected SRC:DST[:MODE]", file=sys.stderr)
            return 2
        mode = int(parts[2], 8) if len(parts) == 3 else 0o644
        if not os.path.isfile(parts[0]):
            print(f"oci_image.py: {parts[0]}: no such file", file=sys.stderr)
            return 2
        files.append((parts[0], parts[1], mode))

    blob_layer = layer(files, a.dir)
    layer_digest = digest(blob_layer)
    labels = dict(kv.split("=", 1) for kv in a.label)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z" if EPOCH == 0 else None,
        "config": {
            "User": a.user,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "Entrypoint": json.loads(a.entrypoint),
            "Cmd": json.loads(a.cmd),
            "ExposedPorts": {f"{port}/tcp": {} for port in a.port},
            "Labels": labels,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "scripts/oci_image.py", "created": "1970-01-01T00:00:00Z"}],
    }
    if config["created"] is None:
        import datetime

        t = datetime.datetime.fromtimestamp(EPOCH, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        config["created"] = t
        config["history"][0]["created"] = t
    blob_config = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(blob_config),
            "size": len(blob_config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": len(blob_layer),
            }
        ],
        "annotations": {k: v for k, v in labels.items() if k.startswith("org.opencontainers.")},
    }
    blob_manifest = canonical(manifest)
    repo, _, tag = a.name.rpartition(":")
    full = repo if "/" in repo.split("/")[0] or "." in repo.split("/")[0] else f"docker.io/library/{repo}"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(blob_manifest),
                "size": len(blob_manifest),
                "annotations": {
                    "io.containerd.image.name": f"{full}:{tag}",
                    "org.opencontainers.image.ref.name": tag,
                },
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    blob = lambda d: "blobs/sha256/" + d.split(":", 1)[1]  # noqa: E731
    docker_manifest = [
        {"Config": blob(digest(blob_config)), "RepoTags": [a.name], "Layers": [blob(layer_digest)]}
    ]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["blobs", "blobs/sha256"]:
            add(tar, d, None, 0o755, tarfile.DIRTYPE)
        blobs = {blob(digest(b)): b for b in (blob_layer, blob_config, blob_manifest)}
        for path in sorted(blobs):
            add(tar, path, blobs[path], 0o644)
        add(tar, "index.json", canonical(index), 0o644)
        add(tar, "manifest.json", canonical(docker_manifest), 0o644)
        add(tar, "oci-layout", canonical({"imageLayoutVersion": "1.0.0"}), 0o644)
    tmp = a.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out.getvalue())
    os.replace(tmp, a.output)
    print(f"{a.name} {digest(blob_manifest)} {len(out.getvalue())} bytes -> {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
